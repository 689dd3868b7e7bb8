use std::path::PathBuf;

use dsocr_weights::WeightError;

/// Everything that can go wrong while configuring, loading or running the decoder.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid decoder config: {0}")]
    Config(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("invalid generation request: {0}")]
    Generation(String),
}
