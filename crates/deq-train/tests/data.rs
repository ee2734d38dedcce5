//! Tests of the data module: readers on the committed datasets, error reporting on damaged
//! files, augmentations and the loader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use deq_core::rng::DeqRng;
use deq_train::data::augment::{
    center_crop, flip_horizontal, horizontal_flip, normalize, random_crop_with_padding, random_resized_crop,
    resize_bilinear, to_f32,
};
use deq_train::data::{
    load_cifar10, load_image, load_image_folder, load_mnist, read_cifar10_file, read_idx_images, read_idx_labels,
    scan_image_folder, write_cifar10_file, AugmentFn, ImageDataset, Loader, LoaderConfig, Shard,
};
use deq_train::TrainError;

const MNIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/mnist");
const CIFAR_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/cifar10-fixture");
/// SHA-256 of `datasets/cifar10-fixture/test_batch.bin`, as recorded in its SOURCE.md.
const CIFAR_FIXTURE_SHA256: &str = "7a75c7f3d741a45b5f79cc341c8607a874c6f441de815b9d426ace5249b5c733";
/// SHA-256 of the 20 fixture images as decoded (each `image(i)`, HWC, concatenated), recorded
/// when they were checked pixel for pixel against the 20 source PNGs.
const CIFAR_FIXTURE_PIXELS_SHA256: &str = "d131c95b857e63d9479fcadff1a4b795b0ce785fa3b8115262fa0b8b150b7c68";
/// Labels of the 20 fixture images, from the file names `cifar10_<index>_<label>.png`.
const CIFAR_FIXTURE_LABELS: [u32; 20] = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6];

/// Lower-case hexadecimal SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh, empty temporary directory unique to this process and `name`.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deq-train-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gunzip(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Asserts `r` is an error whose message names `file` (its file name).
fn assert_err_names<T: std::fmt::Debug>(r: Result<T, TrainError>, file: &Path) -> TrainError {
    let name = file.file_name().unwrap().to_str().unwrap();
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(msg.contains(name), "error `{msg}` does not name `{name}`");
    e
}

#[test]
fn mnist_test_set() {
    let ds = load_mnist(Path::new(MNIST), false).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width, ds.classes), (10000, 1, 28, 28, 10));
    assert_eq!(ds.images.len(), 10000 * 784);
    let hist = ds.label_histogram();
    assert_eq!(hist.iter().sum::<usize>(), 10000);
    assert_eq!(hist, vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    assert_eq!(ds.labels[0], 7);
    assert_eq!(&ds.labels[..5], &[7, 2, 1, 0, 4]);
    // Digits are white on black: borders are empty, centres are not.
    assert_eq!(ds.image(0)[0], 0);
    assert!(ds.image(0).iter().any(|&p| p == 255));
}

#[test]
fn mnist_train_set() {
    let ds = load_mnist(Path::new(MNIST), true).unwrap();
    assert_eq!((ds.len(), ds.height, ds.width), (60000, 28, 28));
    assert_eq!(ds.label_histogram(), vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    assert_eq!(&ds.labels[..4], &[5, 0, 4, 1]);
}

#[test]
fn idx_raw_and_gz_agree() {
    let dir = temp_dir("idx-raw");
    let gz = Path::new(MNIST).join("t10k-labels-idx1-ubyte.gz");
    // A raw copy under a `.gz` name must still be read (detection is by magic, not name).
    let raw = dir.join("labels-not-really.gz");
    std::fs::write(&raw, gunzip(&gz)).unwrap();
    assert_eq!(read_idx_labels(&gz).unwrap(), read_idx_labels(&raw).unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn idx_errors_name_the_file() {
    let dir = temp_dir("idx-errors");
    let labels = gunzip(&Path::new(MNIST).join("t10k-labels-idx1-ubyte.gz"));

    let truncated = dir.join("truncated-labels-idx1-ubyte");
    std::fs::write(&truncated, &labels[..5000]).unwrap();
    let e = assert_err_names(read_idx_labels(&truncated), &truncated);
    assert!(matches!(e, TrainError::Format { .. }) && e.to_string().contains("truncated"), "{e}");

    let short_header = dir.join("short-header-idx3-ubyte");
    std::fs::write(&short_header, idx_bytes(2051, &[1], &[])).unwrap();
    assert_err_names(read_idx_images(&short_header), &short_header);

    let trailing = dir.join("trailing-idx1-ubyte");
    std::fs::write(&trailing, idx_bytes(2049, &[2], &[1, 2, 3])).unwrap();
    assert_err_names(read_idx_labels(&trailing), &trailing);

    let wrong_magic = dir.join("labels-as-images-idx1-ubyte");
    std::fs::write(&wrong_magic, &labels).unwrap();
    let e = assert_err_names(read_idx_images(&wrong_magic), &wrong_magic);
    assert!(e.to_string().contains("magic") && e.to_string().contains("(this is an IDX label file)"), "{e}");
    let images_as_labels = dir.join("images-as-labels-idx3-ubyte");
    std::fs::write(&images_as_labels, idx_bytes(2051, &[1, 1, 1], &[7])).unwrap();
    let e = assert_err_names(read_idx_labels(&images_as_labels), &images_as_labels);
    assert!(e.to_string().contains("(this is an IDX image file)"), "{e}");
    // Gzip inside gzip, and a file of the magic alone (4 bytes: a truncated header).
    let gz_ok = std::fs::read(Path::new(MNIST).join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let twice = dir.join("twice-labels.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &gz_ok).unwrap();
    std::fs::write(&twice, enc.finish().unwrap()).unwrap();
    let e = assert_err_names(read_idx_labels(&twice), &twice);
    assert!(e.to_string().contains("gzip data inside gzip"), "{e}");
    let magic_only = dir.join("magic-only-idx1-ubyte");
    std::fs::write(&magic_only, 2049u32.to_be_bytes()).unwrap();
    let e = assert_err_names(read_idx_labels(&magic_only), &magic_only);
    assert!(e.to_string().contains("truncated IDX header: 4 bytes"), "{e}");

    let mut gz = std::fs::read(Path::new(MNIST).join("t10k-labels-idx1-ubyte.gz")).unwrap();
    for b in &mut gz[200..400] {
        *b ^= 0x5a;
    }
    let corrupt = dir.join("corrupt-labels.gz");
    std::fs::write(&corrupt, &gz).unwrap();
    let e = assert_err_names(read_idx_labels(&corrupt), &corrupt);
    assert!(e.to_string().contains("gzip"), "{e}");

    let gz_ok = std::fs::read(Path::new(MNIST).join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let cut = dir.join("cut-labels.gz");
    std::fs::write(&cut, &gz_ok[..gz_ok.len() / 2]).unwrap();
    assert_err_names(read_idx_labels(&cut), &cut);

    let missing = dir.join("no-such-file-idx3-ubyte");
    let e = assert_err_names(read_idx_images(&missing), &missing);
    assert!(matches!(e, TrainError::Io { .. }));

    // An MNIST folder with none of the files names the file it looked for.
    let empty = temp_dir("idx-empty");
    let e = load_mnist(&empty, false).unwrap_err();
    assert!(e.to_string().contains("t10k-images-idx3-ubyte"), "{e}");
    let _ = std::fs::remove_dir_all(empty);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mnist_count_mismatch_and_bad_label() {
    let dir = temp_dir("mnist-mismatch");
    let img = dir.join("t10k-images-idx3-ubyte");
    let lab = dir.join("t10k-labels-idx1-ubyte");
    std::fs::write(&img, idx_bytes(2051, &[3, 2, 2], &[0; 12])).unwrap();
    std::fs::write(&lab, idx_bytes(2049, &[4], &[0, 1, 2, 3])).unwrap();
    let e = load_mnist(&dir, false).unwrap_err().to_string();
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("t10k-labels-idx1-ubyte"), "{e}");

    std::fs::write(&lab, idx_bytes(2049, &[3], &[0, 12, 2])).unwrap();
    let e = load_mnist(&dir, false).unwrap_err().to_string();
    assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("12"), "{e}");

    std::fs::write(&lab, idx_bytes(2049, &[3], &[0, 9, 2])).unwrap();
    let ds = load_mnist(&dir, false).unwrap();
    assert_eq!((ds.len(), ds.height, ds.width, ds.labels.clone()), (3, 2, 2, vec![0, 9, 2]));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cifar_fixture_matches_the_pngs() {
    let ds = load_cifar10(Path::new(CIFAR_FIXTURE), false).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width, ds.classes), (20, 3, 32, 32, 10));
    assert_eq!(ds.labels, CIFAR_FIXTURE_LABELS.to_vec());
    // The file is the one SOURCE.md describes, and the decoded pixels (HWC, as `image(i)` gives
    // them) are the ones that were checked equal to the 20 source PNGs when the fixture was made.
    let bytes = std::fs::read(Path::new(CIFAR_FIXTURE).join("test_batch.bin")).unwrap();
    assert_eq!(sha256_hex(&bytes), CIFAR_FIXTURE_SHA256, "test_batch.bin is not the recorded fixture");
    let pixels: Vec<u8> = (0..ds.len()).flat_map(|i| ds.image(i).to_vec()).collect();
    assert_eq!(sha256_hex(&pixels), CIFAR_FIXTURE_PIXELS_SHA256, "decoded pixels differ from the source PNGs'");
    // The training split needs data_batch_1..5.bin, which the fixture does not have.
    let e = load_cifar10(Path::new(CIFAR_FIXTURE), true).unwrap_err();
    assert!(matches!(e, TrainError::Io { .. }) && e.to_string().contains("data_batch_1.bin"), "{e}");
}

#[test]
fn cifar_writer_round_trips_and_errors_name_the_file() {
    let dir = temp_dir("cifar");
    let mut rng = DeqRng::new(3);
    let images: Vec<u8> = (0..3 * 3072).map(|_| rng.next_u64() as u8).collect();
    let labels = vec![9, 0, 4];
    let path = dir.join("data_batch_x.bin");
    write_cifar10_file(&path, &images, &labels).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * 3073);
    let (im2, lb2) = read_cifar10_file(&path).unwrap();
    assert_eq!((im2, lb2), (images.clone(), labels.clone()));

    let bad_size = dir.join("bad_size.bin");
    std::fs::write(&bad_size, vec![0u8; 2 * 3073 - 5]).unwrap();
    let e = assert_err_names(read_cifar10_file(&bad_size), &bad_size);
    assert!(e.to_string().contains("3073"), "{e}");

    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    assert_err_names(read_cifar10_file(&empty), &empty);

    let bad_label = dir.join("bad_label.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3073] = 10;
    std::fs::write(&bad_label, bytes).unwrap();
    let e = assert_err_names(read_cifar10_file(&bad_label), &bad_label);
    assert!(e.to_string().contains("record 1"), "{e}");

    let missing = dir.join("missing_batch.bin");
    assert!(matches!(assert_err_names(read_cifar10_file(&missing), &missing), TrainError::Io { .. }));

    let wrong = dir.join("wrong_len.bin");
    assert_err_names(write_cifar10_file(&wrong, &images[..100], &labels), &wrong);
    assert!(!wrong.exists());
    assert_err_names(write_cifar10_file(&wrong, &images, &[1, 2, 10]), &wrong);
    let _ = std::fs::remove_dir_all(dir);
}

fn write_png(path: &Path, w: u32, h: u32, base: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([base, base.wrapping_add((x * 10) as u8), (y * 20) as u8]));
    img.save(path).unwrap();
}

#[test]
fn image_folder_scan_and_load() {
    let root = temp_dir("folder");
    for (class, files) in [("dog", vec!["c.png"]), ("cat", vec!["b.PNG", "a.png"])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for (k, f) in files.iter().enumerate() {
            write_png(&root.join(class).join(f), 4, 3, 100 + k as u8);
        }
    }
    std::fs::write(root.join("cat").join("notes.txt"), b"not an image").unwrap();
    std::fs::write(root.join("README"), b"a file at the root is not a class").unwrap();

    let (samples, classes) = scan_image_folder(&root).unwrap();
    assert_eq!(classes, vec!["cat".to_string(), "dog".to_string()]);
    let names: Vec<(String, u32)> =
        samples.iter().map(|(p, l)| (p.file_name().unwrap().to_str().unwrap().to_string(), *l)).collect();
    assert_eq!(names, vec![("a.png".into(), 0), ("b.PNG".into(), 0), ("c.png".into(), 1)]);

    let (px, h, w) = load_image(root.join("dog/c.png"), None).unwrap();
    assert_eq!((h, w, px.len()), (3, 4, 36));
    // CHW: R plane all 100, G plane 100 + 10x, B plane 20y.
    assert!(px[..12].iter().all(|&v| v == 100));
    assert_eq!(&px[12..16], &[100, 110, 120, 130]);
    assert_eq!(&px[24..36], &[0, 0, 0, 0, 20, 20, 20, 20, 40, 40, 40, 40]);
    let (px, h, w) = load_image(root.join("dog/c.png"), Some((2, 5))).unwrap();
    assert_eq!((h, w, px.len()), (2, 5, 30));
    assert!(px[..10].iter().all(|&v| v == 100));

    let ds = load_image_folder(&root, None).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width, ds.classes), (3, 3, 3, 4, 2));
    assert_eq!(ds.labels, vec![0, 0, 1]);

    // A differing size is refused without `size` and resized with it.
    write_png(&root.join("dog/d.png"), 5, 5, 7);
    assert_err_names(load_image_folder(&root, None), Path::new("d.png"));
    let ds = load_image_folder(&root, Some((8, 8))).unwrap();
    assert_eq!((ds.len(), ds.height, ds.width), (4, 8, 8));

    // Undecodable images name the file.
    let bad = root.join("dog/e.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    assert_err_names(load_image(&bad, None), &bad);
    assert_err_names(load_image_folder(&root, Some((8, 8))), &bad);

    let empty = temp_dir("folder-empty");
    assert_err_names(scan_image_folder(&empty), &empty);
    let _ = std::fs::remove_dir_all(empty);
    let _ = std::fs::remove_dir_all(root);
}

fn ramp(c: usize, h: usize, w: usize) -> Vec<f32> {
    (0..c * h * w).map(|i| i as f32 + 1.0).collect()
}

#[test]
fn augmentations() {
    let (c, h, w) = (2, 5, 6);
    let img = ramp(c, h, w);
    let mut rng = DeqRng::new(1);
    assert_eq!(random_crop_with_padding(&img, c, h, w, 0, &mut rng), img);

    // A padded crop is a shift by (dy, dx) in [-pad, pad] with zeros coming in.
    let mut shifts = std::collections::HashSet::new();
    for _ in 0..200 {
        let out = random_crop_with_padding(&img, c, h, w, 2, &mut rng);
        let found = (-2i32..=2).flat_map(|dy| (-2i32..=2).map(move |dx| (dy, dx))).find(|&(dy, dx)| {
            (0..c * h * w).all(|i| {
                let (k, y, x) = (i / (h * w), (i / w % h) as i32 + dy, (i % w) as i32 + dx);
                let want = if y < 0 || y >= h as i32 || x < 0 || x >= w as i32 {
                    0.0
                } else {
                    img[k * h * w + y as usize * w + x as usize]
                };
                out[i] == want
            })
        });
        shifts.insert(found.expect("crop is not a shift"));
    }
    assert_eq!(shifts.len(), 25, "all 25 offsets should occur in 200 draws");

    let mut f = img.clone();
    flip_horizontal(&mut f, c, h, w);
    assert_eq!(&f[..6], &[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
    assert!(horizontal_flip(&mut f, c, h, w, &mut rng, 1.0));
    assert_eq!(f, img);
    assert!(!horizontal_flip(&mut f, c, h, w, &mut rng, 0.0));
    let flips = (0..1000).filter(|_| horizontal_flip(&mut f.clone(), c, h, w, &mut rng, 0.5)).count();
    assert!((400..600).contains(&flips), "{flips}");

    let mut x = vec![0.0, 0.5, 1.0, 0.25, 0.75, 0.5];
    normalize(&mut x, 2, 1, 3, &[0.5, 0.25], &[0.5, 0.25]);
    assert_eq!(x, vec![-1.0, 0.0, 1.0, 0.0, 2.0, 1.0]);
    assert_eq!(to_f32(&[0, 51, 255]), vec![0.0, 0.2, 1.0]);

    let out = random_resized_crop(&img, c, h, w, 7, 3, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
    assert_eq!(out.len(), c * 7 * 3);
    let (lo, hi) = (1.0, (c * h * w) as f32);
    assert!(out.iter().all(|&v| (lo..=hi).contains(&v)));
    // Full-area crop at the image's own aspect ratio and size is the identity.
    let r = w as f64 / h as f64;
    assert_eq!(random_resized_crop(&img, c, h, w, h, w, (1.0, 1.0), (r, r), &mut rng), img);
    // Impossible ratios fall back to a centre crop.
    let fb = random_resized_crop(&img, c, h, w, 2, 2, (1.0, 1.0), (10.0, 10.0), &mut rng);
    assert_eq!(fb.len(), c * 4);
    assert_eq!(resize_bilinear(&vec![3.0; 12], 1, 3, 4, 5, 2), vec![3.0; 10]);
    assert_eq!(center_crop(&img, c, h, w, 3, 2), vec![9., 10., 15., 16., 21., 22., 39., 40., 45., 46., 51., 52.]);

    // Same seed, same result; different seed, different result.
    let run = |seed| {
        let mut r = DeqRng::new(seed);
        let a = random_resized_crop(&img, c, h, w, 4, 4, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut r);
        let b = random_crop_with_padding(&img, c, h, w, 1, &mut r);
        (a, b)
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

/// `n` images of 1x2x2 whose pixels all equal their index; label `i % 3`.
fn toy(n: usize) -> Arc<ImageDataset> {
    let images = (0..n).flat_map(|i| [i as u8; 4]).collect();
    Arc::new(ImageDataset::new(images, (0..n as u32).map(|i| i % 3).collect(), 1, 2, 2, 3).unwrap())
}

fn cfg(batch_size: usize, seed: u64) -> LoaderConfig {
    LoaderConfig { batch_size, seed, ..LoaderConfig::default() }
}

fn collect(loader: &Loader, epoch: usize) -> Vec<(Vec<usize>, Vec<f32>, Vec<u32>)> {
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            (b.indices, b.images.flatten_all().unwrap().to_vec1().unwrap(), b.labels.to_vec1().unwrap())
        })
        .collect()
}

#[test]
fn dataset_subset_and_truncate() {
    let ds = toy(6);
    let sub = ds.subset(&[5, 1, 1]);
    assert_eq!((sub.len(), sub.labels.clone(), sub.image(0).to_vec()), (3, vec![2, 1, 1], vec![5; 4]));
    let mut t = (*ds).clone();
    t.truncate(2);
    assert_eq!((t.len(), t.images.len(), t.labels.len()), (2, 8, 2));
    assert!(ImageDataset::new(vec![0; 7], vec![0, 1], 1, 2, 2, 3).is_err());
    assert!(ImageDataset::new(vec![0; 8], vec![0, 3], 1, 2, 2, 3).is_err());
}

#[test]
fn loader_batches_are_deterministic_and_well_formed() {
    let ds = toy(10);
    let mut c = cfg(4, 7);
    c.mean = vec![0.5];
    c.std = vec![0.5];
    let loader = Loader::new(ds.clone(), c).unwrap();
    assert_eq!(loader.num_batches(), 3);
    let mut it = loader.epoch(0);
    assert_eq!(it.len(), 3);
    let b = it.next().unwrap().unwrap();
    assert_eq!(b.images.dims(), &[4, 1, 2, 2]);
    assert_eq!(b.images.dtype(), DType::F32);
    assert_eq!(b.labels.dims(), &[4]);
    assert_eq!(b.labels.dtype(), DType::U32);
    let v: Vec<f32> = b.images.flatten_all().unwrap().to_vec1().unwrap();
    for (k, &i) in b.indices.iter().enumerate() {
        assert!((v[4 * k] - (i as f32 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
    }
    drop(it); // stops the worker early without hanging

    let e0 = collect(&loader, 0);
    assert_eq!(e0, collect(&loader, 0), "same seed and epoch, same batches");
    assert_eq!(e0, collect(&Loader::new(ds.clone(), loader.config().clone()).unwrap(), 0));
    assert_ne!(e0.iter().map(|b| b.0.clone()).collect::<Vec<_>>(), collect(&loader, 1).iter().map(|b| b.0.clone()).collect::<Vec<_>>());
    let mut all: Vec<usize> = e0.iter().flat_map(|b| b.0.clone()).collect();
    assert_eq!(e0.iter().map(|b| b.0.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    for (idx, _, labels) in &e0 {
        assert_eq!(labels, &idx.iter().map(|&i| (i % 3) as u32).collect::<Vec<_>>());
    }

    let unshuffled = Loader::new(ds.clone(), LoaderConfig { shuffle: false, ..cfg(4, 7) }).unwrap();
    assert_eq!(unshuffled.batch_indices(3), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    let dropping = Loader::new(ds.clone(), LoaderConfig { drop_last: true, ..cfg(4, 7) }).unwrap();
    assert_eq!(dropping.num_batches(), 2);
    assert_eq!(collect(&dropping, 0).iter().map(|b| b.0.len()).collect::<Vec<_>>(), vec![4, 4]);

    assert!(Loader::new(ds.clone(), cfg(0, 0)).is_err());
    assert!(Loader::new(ds.clone(), LoaderConfig { mean: vec![0.0, 0.0], std: vec![1.0, 1.0], ..cfg(2, 0) }).is_err());
    assert!(Loader::new(ds, LoaderConfig { shard: Shard { rank: 2, world_size: 2 }, ..cfg(2, 0) }).is_err());
}

#[test]
fn loader_shards() {
    for (n, world) in [(12usize, 3usize), (10, 3), (10, 4), (2, 3)] {
        let ds = toy(n);
        let per_rank: Vec<Vec<usize>> = (0..world)
            .map(|rank| {
                let c = LoaderConfig { shard: Shard::new(rank, world).unwrap(), ..cfg(3, 11) };
                let l = Loader::new(ds.clone(), c).unwrap();
                let idx: Vec<usize> = collect(&l, 5).into_iter().flat_map(|b| b.0).collect();
                assert_eq!(idx, l.rank_indices(5));
                idx
            })
            .collect();
        let each = n.div_ceil(world);
        assert!(per_rank.iter().all(|r| r.len() == each), "n={n} world={world}: {per_rank:?}");
        let mut all: Vec<usize> = per_rank.concat();
        all.sort();
        let padded = each * world - n;
        all.dedup();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "shards cover the dataset");
        if padded == 0 {
            assert_eq!(per_rank.concat().len(), n, "shards are disjoint");
        }
    }
}

#[test]
fn loader_augmentation_is_deterministic() {
    let ds = toy(32);
    let aug: AugmentFn = Arc::new(|img: &[u8], c, h, w, rng: &mut DeqRng| {
        let mut x = to_f32(img);
        horizontal_flip(&mut x, c, h, w, rng, 0.5);
        let mut v = vec![rng.uniform() as f32];
        v.extend(random_crop_with_padding(&x, c, h, w, 1, rng));
        v
    });
    let make = || Loader::new(ds.clone(), LoaderConfig { prefetch: 1, ..cfg(5, 99) }).unwrap().with_augment(aug.clone(), (1, 1, 5));
    let a = collect(&make(), 2);
    assert_eq!(a, collect(&make(), 2));
    assert_ne!(a, collect(&make(), 3));
    let draws: Vec<f32> = a.iter().flat_map(|b| b.1.chunks(5).map(|s| s[0]).collect::<Vec<_>>()).collect();
    let mut uniq = draws.clone();
    uniq.sort_by(f32::total_cmp);
    uniq.dedup();
    assert_eq!(uniq.len(), 32, "every sample gets its own generator");

    let wrong = Loader::new(ds, cfg(4, 0)).unwrap().with_augment(aug, (1, 2, 2));
    let mut it = wrong.epoch(0);
    assert!(matches!(it.next(), Some(Err(TrainError::Config { .. }))));
    assert!(it.next().is_none());
}
