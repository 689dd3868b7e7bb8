//! The DeepSeek-OCR projector and the vision-token layout (spec §5.3–§5.4).
//!
//! The encoder's fused `[CLIP | SAM]` features are mapped into the language model's embedding
//! space by one linear layer; the learned `image_newline` vector then ends every row of the
//! token grid and `view_seperator` closes the image:
//!
//! ```text
//! with tiles:  [ stitched local grid, newline per row ] [ global grid, newline per row ] [ separator ]
//! without:     [ global grid, newline per row ] [ separator ]
//! ```
//! The local grid comes first regardless of the config's `global_view_pos`.

mod layout;
mod projector;

pub use layout::{layout_tokens, TileGrid};
pub use projector::{Projector, ProjectorConfig, ProjectorError};
