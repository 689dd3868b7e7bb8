use std::path::PathBuf;

/// Everything that can go wrong while opening a checkpoint or taking a tensor out of it.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path} is not a valid safetensors index: {message}")]
    Index { path: PathBuf, message: String },
    #[error(
        "no weights in {dir}: expected model.safetensors, model.safetensors.index.json or a single *.safetensors file"
    )]
    NoWeights { dir: PathBuf },
    #[error("tensor `{name}` is missing from the checkpoint")]
    Missing { name: String },
    #[error("tensor `{name}` has shape {found:?} in the checkpoint, the model expects {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}` has dtype {dtype}, only F32, F16 and BF16 weights are supported")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` cannot be loaded as asked: {reason}")]
    Unsupported { name: String, reason: String },
    #[error("backend `{name}` is not available: {reason}")]
    Backend { name: String, reason: String },
}
