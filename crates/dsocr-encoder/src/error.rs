use std::path::PathBuf;

use dsocr_weights::WeightError;

/// Everything that can go wrong while configuring, loading or running the DeepEncoder.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A tensor is missing, has the wrong shape or dtype, or the checkpoint cannot be read.
    #[error(transparent)]
    Weight(#[from] WeightError),
    /// The vision sizes do not fit together, or `config.json` holds a malformed value.
    #[error("invalid encoder config: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A view side whose position tables were not prepared at load time.
    #[error("unsupported view size {height}x{width}: views must be square with a side in {supported:?}")]
    UnsupportedView { height: usize, width: usize, supported: Vec<usize> },
    /// Pixel input of the wrong layout (not `[B, 3, L, L]`, or a buffer of the wrong length).
    #[error("invalid pixel input: {0}")]
    Pixels(String),
}
