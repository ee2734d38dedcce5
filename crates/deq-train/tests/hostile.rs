//! Damaged inputs for every reader in deq-train: each committed format fixture
//! (`tests/fixtures/formats/`), cut at every length and mutated 2,000 times with a fixed seed,
//! must read or fail with an error naming the file, never panic.

use std::path::{Path, PathBuf};

use candle_core::Device;
use deq_train::data::{load_image, read_cifar10_file, read_idx_images, read_idx_labels, read_npy};
use deq_train::hostile::{check_fixture, FORMAT_FIXTURES};
use deq_train::Checkpointer;

const MUTATIONS: usize = 2000;

/// Every truncation and `MUTATIONS` seeded mutations of the fixture `name` (a private copy).
fn check<T, E: std::fmt::Display>(name: &str, seed: u64, read: impl Fn(&Path) -> Result<T, E>) {
    check_fixture(&Path::new(FORMAT_FIXTURES).join(name), MUTATIONS, seed, read).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn idx_files_raw_and_gzipped() {
    let names = ["mnist-images-idx3-ubyte", "mnist-labels-idx1-ubyte", "mnist-images-idx3-ubyte.gz", "mnist-labels-idx1-ubyte.gz"];
    check(names[0], 1, |p: &Path| read_idx_images(p));
    check(names[1], 2, |p: &Path| read_idx_labels(p));
    check(names[2], 3, |p: &Path| read_idx_images(p));
    check(names[3], 4, |p: &Path| read_idx_labels(p));
}

#[test]
fn cifar_and_npy() {
    let names = ["cifar10.bin", "array-f4.npy", "array-f8-fortran.npy"];
    check(names[0], 5, |p: &Path| read_cifar10_file(p));
    check(names[1], 6, |p: &Path| read_npy(p));
    check(names[2], 7, |p: &Path| read_npy(p));
}

#[test]
fn images_png_and_jpeg() {
    let names = ["image-rgb.png", "image-grey.png", "image.jpg", "flow-kitti.png"];
    for (k, n) in names.iter().enumerate() {
        check(n, 10 + k as u64, |p: &Path| load_image(p, None));
        check(n, 20 + k as u64, |p: &Path| load_image(p, Some((5, 4))));
    }
}

#[test]
fn checkpoint_tensors_and_sidecar() {
    let names = ["checkpoint/step-00000002.safetensors", "checkpoint/latest.json"];
    // Damage the tensor file with the sidecar intact, then the sidecar with the tensors intact.
    check(names[0], 30, |p: &Path| Checkpointer::load(&p.with_file_name("latest.json"), &Device::Cpu));
    check(names[1], 31, |p: &Path| Checkpointer::load(p, &Device::Cpu));
}

/// Files whose header declares about 2^40 elements, each of which must be refused against the
/// real file size before anything is allocated.
fn huge_header_file(case: &str, dir: &Path) -> PathBuf {
    let be = |v: u32| v.to_be_bytes();
    let (name, bytes): (&str, Vec<u8>) = match case {
        "idx" => ("huge-idx3-ubyte", [be(2051), be(1 << 20), be(1 << 10), be(1 << 10)].concat()),
        "idx-gz" => {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&[be(2051), be(1 << 20), be(1 << 10), be(1 << 10)].concat()).unwrap();
            e.write_all(&[0u8; 4096]).unwrap();
            ("huge-idx3-ubyte.gz", e.finish().unwrap())
        }
        "npy" => {
            let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }".to_string();
            while (10 + h.len() + 1) % 64 != 0 {
                h.push(' ');
            }
            h.push('\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&[0u8; 64]);
            ("huge.npy", b)
        }
        "safetensors" => {
            let mut b = (1u64 << 40).to_le_bytes().to_vec();
            b.extend_from_slice(b"{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776],\"data_offsets\":[0,4398046511104]}}");
            ("step-00000001.safetensors", b)
        }
        "png" => {
            ("huge.png", deq_train::hostile::png_with_size(&std::fs::read(Path::new(FORMAT_FIXTURES).join("image-rgb.png")).unwrap(), 1 << 20, 1 << 20))
        }
        other => panic!("unknown case {other}"),
    };
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The child side of `huge_headers_are_refused_under_a_memory_limit` (a no-op in a normal run).
#[test]
fn memory_limited_child() {
    let Some(case) = deq_train::hostile::child_case() else { return };
    let dir = std::env::temp_dir().join(format!("deq-hostile-huge-{case}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if case == "control" {
        // Proves the limit bites: 4 GiB, touched, cannot be had under it.
        let v = vec![1u8; 4 << 30];
        println!("allocated {}", v.iter().step_by(4096).map(|&x| x as usize).sum::<usize>());
        return;
    }
    let p = huge_header_file(&case, &dir);
    let name = p.file_name().unwrap().to_str().unwrap().to_string();
    let msg = match case.as_str() {
        "idx" | "idx-gz" => read_idx_images(&p).map(|_| ()).unwrap_err().to_string(),
        "npy" => read_npy(&p).map(|_| ()).unwrap_err().to_string(),
        "safetensors" => {
            std::fs::write(dir.join("latest.json"), format!("{{\"step\": 1, \"tensors\": \"{name}\"}}")).unwrap();
            Checkpointer::load(&dir.join("latest.json"), &Device::Cpu).map(|_| ()).unwrap_err().to_string()
        }
        "png" => load_image(&p, None).map(|_| ()).unwrap_err().to_string(),
        other => panic!("unknown case {other}"),
    };
    assert!(msg.contains(&name), "{msg}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn huge_headers_are_refused_under_a_memory_limit() {
    const LIMIT_KIB: u64 = 1 << 20; // 1 GiB of address space
    let control = deq_train::hostile::run_under_memory_limit("memory_limited_child", "control", LIMIT_KIB);
    assert!(control.is_err(), "the memory limit must stop a 4 GiB allocation");
    for case in ["idx", "idx-gz", "npy", "safetensors", "png"] {
        deq_train::hostile::run_under_memory_limit("memory_limited_child", case, LIMIT_KIB).unwrap_or_else(|e| panic!("{e}"));
    }
}
