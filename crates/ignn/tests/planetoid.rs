//! The Planetoid reader on the committed Cora copy, and its errors on bad files.

use ignn::planetoid::load_planetoid;
use std::path::{Path, PathBuf};

fn cora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/cora")
}

#[test]
fn cora_loads_with_the_public_split() {
    let t = load_planetoid(&cora()).unwrap();
    assert_eq!(t.graph.n, 2708);
    assert_eq!(t.graph.num_edges(), 2 * 5278, "undirected edges stored both ways");
    assert_eq!((t.feature_dim, t.classes), (1433, 7));
    assert_eq!((t.split.0.len(), t.split.1.len(), t.split.2.len()), (140, 500, 1000));
    let mut per_class = [0usize; 7];
    for &i in &t.split.0 {
        per_class[t.labels.single().unwrap()[i as usize] as usize] += 1;
    }
    assert_eq!(per_class, [20; 7]);
    // Row-normalised features.
    let s: f32 = t.features[..1433].iter().sum();
    assert!((s - 1.0).abs() < 1e-5);
}

fn broken(tag: &str, file: &str, edit: impl Fn(String) -> String) -> String {
    let dir = std::env::temp_dir().join(format!("ignn-planetoid-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["meta.txt", "edges.txt", "self_loops.txt", "features.txt", "labels.txt", "split.txt"] {
        let text = std::fs::read_to_string(cora().join(f)).unwrap();
        std::fs::write(dir.join(f), if f == file { edit(text) } else { text }).unwrap();
    }
    let e = load_planetoid(&dir).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    e
}

#[test]
fn bad_files_name_the_file_and_line() {
    let e = broken("range", "edges.txt", |t| t.replacen("0 633", "0 9999", 1));
    assert!(e.contains("edges.txt:1") && e.contains("9999"), "{e}");
    let e = broken("malformed", "edges.txt", |t| t.replacen("0 633", "0 633 7", 1));
    assert!(e.contains("edges.txt:1"), "{e}");
    let e = broken("labels", "labels.txt", |t| t.lines().skip(1).collect::<Vec<_>>().join("\n"));
    assert!(e.contains("labels.txt") && e.contains("2707 labels for the 2708 nodes of") && e.contains("meta.txt"), "{e}");
    let e = broken("featcount", "features.txt", |t| t.replacen("0 9 ", "0 10 ", 1));
    assert!(e.contains("features.txt:1") && e.contains("declares 10"), "{e}");
    let e = broken("featidx", "features.txt", |t| t.replacen("19:1", "5000:1", 1));
    assert!(e.contains("features.txt:1") && e.contains("5000"), "{e}");
    let e = broken("class", "labels.txt", |t| t.replacen("3\n", "9\n", 1));
    assert!(e.contains("labels.txt:1") && e.contains("class 9"), "{e}");
    let e = broken("missing", "meta.txt", |_| String::new());
    assert!(e.contains("meta.txt") && e.contains("nodes"), "{e}");
}
