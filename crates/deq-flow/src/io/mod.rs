//! Readers and writers of flow files and frames.
//!
//! Every reader checks a header's declared sizes against the real file size before allocating
//! anything for the payload, so a corrupt or hostile header (say 2^31 x 2^31 pixels) is an
//! error naming the file, never an allocation failure.
//!
//! | module | format |
//! |---|---|
//! | [`flo`] | Middlebury `.flo` (read and write) |
//! | [`pfm`] | Portable Float Map (FlyingThings3D's flow) |
//! | [`kitti`] | KITTI-2015 / HD1K 16-bit PNG flow with its valid mask (read and write) |
//! | [`frames`] | PNG/JPEG frames as `(3, H, W)` tensors in `[0, 255]` |
//! | [`viz`] | the Middlebury colour wheel |

pub mod flo;
pub mod frames;
pub mod kitti;
pub mod pfm;
pub mod viz;

use std::path::Path;

use crate::error::Result;
use crate::flow::Flow;

/// Reads a flow file by extension: `.flo`, `.pfm` or `.png` (KITTI encoding).
pub fn read_flow(path: &Path) -> Result<Flow> {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("flo") => flo::read(path),
        Some("pfm") => pfm::read_flow(path),
        Some("png") => kitti::read(path),
        _ => Err(crate::error::FlowError::format(path, "unknown flow file extension (expected .flo, .pfm or .png)")),
    }
}
