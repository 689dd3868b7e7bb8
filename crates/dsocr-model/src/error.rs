use std::path::PathBuf;

/// Errors of loading and running the whole model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("model folder {dir} has no {file}")]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error(transparent)]
    Weights(#[from] dsocr_weights::WeightError),
    #[error(transparent)]
    Encoder(#[from] dsocr_encoder::EncoderError),
    #[error(transparent)]
    Projector(#[from] dsocr_projector::ProjectorError),
    #[error(transparent)]
    Decoder(#[from] dsocr_decoder::DecoderError),
    #[error(transparent)]
    Prompt(#[from] dsocr_input::PromptError),
    #[error("{0}")]
    Input(String),
    #[error("reading a result back from the device failed: {0}")]
    Readback(String),
    /// A batched run was stopped before this request started.
    #[error("stopped before this page started")]
    NotStarted,
}
