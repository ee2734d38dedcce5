#![no_main]
//! PNG / JPEG / PNM through the shared size-limited decoder, then the conversions and resizes the readers make.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = deq_train::data::decode_image(data) {
        let _ = img.to_rgb8();
        let _ = img.to_luma32f();
        let _ = img.resize_exact(8, 8, image::imageops::FilterType::Triangle);
    }
});
