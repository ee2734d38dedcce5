//! Readers and writers: PNG and WAV round trips, corrupt and unsupported files named in errors,
//! video folders, PSNR against hand-computed values, and every config parsing.

use deq_inr::image_io::Image;
use deq_inr::task::{self, psnr, Layout, Samples};
use deq_inr::wav::Audio;
use std::path::PathBuf;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deq-inr-io-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn png_round_trips_grey_and_rgb() {
    let d = tmp("png");
    for c in [1, 3] {
        let data: Vec<f32> = (0..5 * 7 * c).map(|i| (i * 37 % 256) as f32 / 255.0).collect();
        let img = Image { height: 5, width: 7, channels: c, data };
        let p = d.join(format!("x{c}.png"));
        img.write_png(&p).unwrap();
        let back = Image::read(&p).unwrap();
        assert_eq!((back.height, back.width, back.channels), (5, 7, c));
        for (a, b) in img.data.iter().zip(&back.data) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
    // The committed camera is 512x512 grey, the astronaut 512x512 RGB.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/inr/images");
    let cam = Image::read(&root.join("camera.png")).unwrap();
    assert_eq!((cam.height, cam.width, cam.channels), (512, 512, 1));
    let small = cam.resized(256, 256);
    let want = (cam.data[0] + cam.data[1] + cam.data[512] + cam.data[513]) / 4.0;
    assert!((small.data[0] - want).abs() < 1e-6, "box filter");
    let ast = Image::read(&root.join("astronaut.png")).unwrap();
    assert_eq!(ast.channels, 3);
    // Errors name the file.
    std::fs::write(d.join("bad.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let e = Image::read(&d.join("bad.png")).unwrap_err().to_string();
    assert!(e.contains("bad.png"), "{e}");
    let full = std::fs::read(d.join("x3.png")).unwrap();
    std::fs::write(d.join("cut.png"), &full[..full.len() / 2]).unwrap();
    assert!(Image::read(&d.join("cut.png")).unwrap_err().to_string().contains("cut.png"));
    assert!(Image::read(&d.join("none.png")).unwrap_err().to_string().contains("none.png"));
}

fn wav_bytes(tag: u16, bits: u16, channels: u16, extensible: bool, payload: &[u8]) -> Vec<u8> {
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&(if extensible { 0xFFFEu16 } else { tag }).to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&8000u32.to_le_bytes());
    fmt.extend_from_slice(&(8000 * (bits as u32 / 8) * channels as u32).to_le_bytes());
    fmt.extend_from_slice(&((bits / 8) * channels).to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    if extensible {
        fmt.extend_from_slice(&22u16.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        fmt.extend_from_slice(&0u32.to_le_bytes());
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71]);
    }
    let mut b = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
    b.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    b.extend_from_slice(&fmt);
    b.extend_from_slice(b"fact\x04\0\0\0\x02\0\0\0");
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    let n = b.len() as u32 - 8;
    b[4..8].copy_from_slice(&n.to_le_bytes());
    b
}

#[test]
fn wav_reads_pcm_and_float_and_round_trips() {
    let d = tmp("wav");
    let a = Audio { rate: 44100, samples: vec![0.0, 0.5, -0.25, 1.0, -1.0, 0.123_456_7] };
    a.write(&d.join("f.wav"), true).unwrap();
    assert_eq!(Audio::read(&d.join("f.wav")).unwrap(), a, "float32 is exact");
    a.write(&d.join("p.wav"), false).unwrap();
    let p = Audio::read(&d.join("p.wav")).unwrap();
    for (x, y) in a.samples.iter().zip(&p.samples) {
        assert!((x - y).abs() < 1.0 / 32000.0, "{x} vs {y}");
    }
    // 16-bit stereo is averaged to mono; 24-bit and extensible float read.
    let pcm16: Vec<u8> = [16384i16, -16384, 32767, 32767].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(d.join("s.wav"), wav_bytes(1, 16, 2, false, &pcm16)).unwrap();
    let s = Audio::read(&d.join("s.wav")).unwrap();
    assert_eq!(s.rate, 8000);
    assert_eq!(s.samples.len(), 2);
    assert!(s.samples[0].abs() < 1e-6 && (s.samples[1] - 32767.0 / 32768.0).abs() < 1e-6);
    std::fs::write(d.join("24.wav"), wav_bytes(1, 24, 1, false, &[0x00, 0x00, 0x40, 0x00, 0x00, 0xC0])).unwrap();
    assert_eq!(Audio::read(&d.join("24.wav")).unwrap().samples, vec![0.5, -0.5]);
    let fl: Vec<u8> = [0.25f32, -0.75].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(d.join("ext.wav"), wav_bytes(3, 32, 1, true, &fl)).unwrap();
    assert_eq!(Audio::read(&d.join("ext.wav")).unwrap().samples, vec![0.25, -0.75]);
    // Unsupported and corrupt files name the file and the problem.
    std::fs::write(d.join("ulaw.wav"), wav_bytes(7, 8, 1, false, &[1, 2, 3])).unwrap();
    let e = Audio::read(&d.join("ulaw.wav")).unwrap_err().to_string();
    assert!(e.contains("ulaw.wav") && e.contains("unsupported"), "{e}");
    let full = wav_bytes(3, 32, 1, false, &fl);
    std::fs::write(d.join("cut.wav"), &full[..full.len() - 3]).unwrap();
    let e = Audio::read(&d.join("cut.wav")).unwrap_err().to_string();
    assert!(e.contains("cut.wav") && e.contains("truncated"), "{e}");
    std::fs::write(d.join("txt.wav"), b"hello").unwrap();
    assert!(Audio::read(&d.join("txt.wav")).unwrap_err().to_string().contains("RIFF"));
    let nan: Vec<u8> = [f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(d.join("nan.wav"), wav_bytes(3, 32, 1, false, &nan)).unwrap();
    assert!(Audio::read(&d.join("nan.wav")).unwrap_err().to_string().contains("NaN"));
}

#[test]
fn psnr_matches_hand_computed_values() {
    // MSE 0.25 with peak 1: 10 log10(4) = 6.0206 dB.
    assert!((psnr(&[0.5, 0.5], &[0.0, 1.0], 1.0) - 6.020_599_913_279_624).abs() < 1e-9);
    // Image samples: model space [-1, 1] maps to [0, 1]; prediction 0 (= 0.5) against pixels 0
    // and 1; an out-of-range prediction is clamped first.
    let s = Samples { coords: vec![0.0; 4], targets: vec![-1.0, 1.0], layout: Layout::Image { height: 1, width: 2, channels: 1 } };
    assert!((s.psnr(&[0.0, 0.0]) - 6.020_599_913_279_624).abs() < 1e-9);
    assert!((s.psnr(&[-5.0, 0.0]) - 10.0 * (1.0f64 / 0.125).log10()).abs() < 1e-9);
    // Audio: peak 1 on the normalised waveform, no clamping. MSE = (0.1^2 + 0.3^2) / 2 = 0.05.
    let a = Samples { coords: vec![0.0; 2], targets: vec![0.5, -0.5], layout: Layout::Audio { rate: 8000, peak: 2.0 } };
    assert!((a.psnr(&[0.6, -0.2]) - 10.0 * 20f64.log10()).abs() < 1e-6);
}

#[test]
fn tasks_build_the_zoo_grids() {
    let img = Image { height: 4, width: 4, channels: 1, data: (0..16).map(|i| i as f32 / 15.0).collect() };
    let (tr, te) = task::image_generalization(&img);
    assert_eq!((tr.len(), te.len()), (4, 4));
    // Train on rows/cols 0 and 2, test on 1 and 3, with the coordinates of the full grid.
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(&tr.coords[..4], &[-1.0, -1.0, 1.0 / 3.0, -1.0]), "{:?}", &tr.coords[..4]);
    assert!(close(&te.coords[..2], &[-1.0 / 3.0, -1.0 / 3.0]), "{:?}", &te.coords[..2]);
    assert_eq!(tr.targets[1], 2.0 * (2.0 / 15.0) - 1.0);
    assert_eq!(te.targets[0], 2.0 * (5.0 / 15.0) - 1.0);
    assert_eq!(task::linspace(3), vec![-1.0, 0.0, 1.0]);
    // Video folders: sorted frames, (t, y, x) coordinates, mismatched frames named.
    let d = tmp("video");
    for f in 0..3 {
        Image { height: 2, width: 3, channels: 3, data: vec![f as f32 / 2.0; 18] }.write_png(&d.join(format!("{f:04}.png"))).unwrap();
    }
    let (v, _) = task::video_task(&d, 0).unwrap();
    assert_eq!(v.layout, Layout::Video { frames: 3, height: 2, width: 3, channels: 3 });
    assert_eq!(&v.coords[..3], &[-1.0, -1.0, -1.0]);
    assert_eq!(&v.coords[v.coords.len() - 3..], &[1.0, 1.0, 1.0]);
    assert_eq!(v.frame_psnr(&v.targets).len(), 3);
    Image { height: 3, width: 3, channels: 3, data: vec![0.0; 27] }.write_png(&d.join("0009.png")).unwrap();
    let e = task::video_task(&d, 0).unwrap_err().to_string();
    assert!(e.contains("0009.png") && e.contains("first frame"), "{e}");
    assert!(task::video_task(&tmp("empty"), 0).unwrap_err().to_string().contains("no .png"));
}

#[test]
fn every_config_parses_and_unknown_keys_are_named() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-inr");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let c = deq_inr::config::RunConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
        c.deq.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        c.fit.lr_at(0, 0.0).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        n += 1;
    }
    assert!(n >= 11, "{n} configs");
    let d = tmp("cfg");
    std::fs::write(d.join("c.toml"), "[model]\nwidht = 3\n").unwrap();
    let e = deq_inr::config::RunConfig::load(&d.join("c.toml")).unwrap_err().to_string();
    assert!(e.contains("c.toml") && e.contains("widht"), "{e}");
}

#[test]
fn command_line_overrides_set_keys_and_name_unknown_ones() {
    use deq_inr::config::RunConfig;
    let d = tmp("sets");
    let p = d.join("c.toml");
    std::fs::write(&p, "[model]\nwidth = 64\n[fit]\nlr = 1e-3\n").unwrap();
    let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let c = RunConfig::load_with(&p, &sets(&["fit.lr=3e-3", "fit.lr_schedule=cosine", "model.input_scale = 128", "deq.f_max_iter=7"])).unwrap();
    assert_eq!(c.fit.lr, 3e-3);
    assert_eq!(c.fit.lr_schedule, "cosine");
    assert_eq!(c.model.input_scale, 128.0);
    assert_eq!(c.model.width, 64, "keys not set keep the file's value");
    assert_eq!(c.deq.f_max_iter, 7);
    assert!(c.fit.lr_at(c.fit.steps, 0.0).unwrap() < 1e-12, "cosine decays to min_lr at fit.steps");
    let e = RunConfig::load_with(&p, &sets(&["fit.learning_rate=1"])).unwrap_err().to_string();
    assert!(e.contains("learning_rate") && e.contains("c.toml"), "{e}");
    let e = RunConfig::load_with(&p, &sets(&["lr=1"])).unwrap_err().to_string();
    assert!(e.contains("section.key=value"), "{e}");
    let c = RunConfig::load_with(&p, &sets(&["fit.lr_schedule=linear"])).unwrap();
    assert!(c.fit.lr_at(0, 0.0).unwrap_err().to_string().contains("fit.lr_schedule"));
    let c = RunConfig::load_with(&p, &sets(&["fit.lr_schedule=cosine_time"])).unwrap();
    assert!(c.fit.lr_at(0, 0.0).unwrap_err().to_string().contains("max_seconds"), "a time schedule needs a time budget");
    let c = RunConfig::load_with(&p, &sets(&["fit.lr_schedule=cosine_time", "fit.max_seconds=100", "fit.min_lr=1e-5"])).unwrap();
    assert_eq!(c.fit.lr_at(3, 0.0).unwrap(), 1e-3);
    assert!((c.fit.lr_at(3, 50.0).unwrap() - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-15);
    assert!((c.fit.lr_at(3, 100.0).unwrap() - 1e-5).abs() < 1e-15);
    assert!((c.fit.lr_at(3, 500.0).unwrap() - 1e-5).abs() < 1e-15);
}
