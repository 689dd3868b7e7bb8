use std::path::PathBuf;

/// Everything that can go wrong between an image file / prompt string and the model inputs.
///
/// Errors about a file always carry its path (or the name given to
/// [`load_image_from_memory`](crate::load_image_from_memory)) and show it in their message.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the file is empty (0 bytes)", path.display())]
    EmptyFile { path: PathBuf },
    #[error("{}: not a recognised image file (expected PNG, JPEG, WebP, TIFF, BMP or GIF)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}: unsupported image: {what} (expected PNG, JPEG, WebP, TIFF, BMP or GIF)", path.display())]
    UnsupportedFormat { path: PathBuf, what: String },
    #[error("{}: truncated or corrupt image: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "{}: image is {width}x{height} = {} pixels, more than the limit of {limit} \
         (possible decompression bomb; raise the limit in LoadOptions if the file is trusted)",
        path.display(), *width as u64 * *height as u64
    )]
    TooManyPixels { path: PathBuf, width: u32, height: u32, limit: u64 },
    /// The image decoder (a dependency) panicked on this file; the panic was caught.
    #[error("{}: the image decoder crashed on this file ({message}); it cannot be read", path.display())]
    DecoderPanicked { path: PathBuf, message: String },
    #[error("{}: image has a zero width or height ({width}x{height})", path.display())]
    ZeroSize { path: PathBuf, width: u32, height: u32 },
    #[error("cannot preprocess an image of size {width}x{height}: width and height must be at least 1")]
    EmptyImage { width: u32, height: u32 },
    #[error("invalid maximum tile count {value}: must be between 2 and 9")]
    InvalidMaxTiles { value: u32 },
    #[error("unknown mode `{value}` (expected tiny, small, base, large or gundam)")]
    InvalidMode { value: String },
    #[error("unknown task `{value}` (expected markdown, ocr, free, figure, describe or locate:<text>)")]
    InvalidTask { value: String },

    #[error("cannot load tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizer failed to encode {text:?}: {message}")]
    Encode { text: String, message: String },
    #[error("tokenizer failed to decode ids: {message}")]
    Decode { message: String },
    #[error("the tokenizer has no `{token}` token")]
    MissingSpecialToken { token: String },

    #[error("the prompt contains {count} `<image>` placeholders; only one image per prompt is supported")]
    TooManyImagePlaceholders { count: usize },
    #[error("an image was given but the prompt has no `<image>` placeholder")]
    MissingImagePlaceholder,
    #[error("the prompt contains `<image>` but no image was given")]
    UnexpectedImagePlaceholder,
}

pub type Result<T, E = PromptError> = std::result::Result<T, E>;

/// The message of a caught panic (`panic!` with a string literal or a formatted string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
