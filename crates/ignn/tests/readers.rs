//! The GraphSAGE (PPI) and TU readers on committed fixtures written by
//! `scripts/make_graph_fixtures.py` (networkx + numpy, the formats' own writers), and their
//! errors on broken copies.

use ignn::ppi::load_graphsage;
use ignn::train::Labels;
use ignn::tu::load_tu;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn graphsage_fixture_reads_as_written() {
    let t = load_graphsage(&fixture("ppi-mini"), "ppi", false).unwrap();
    assert_eq!(t.graph.n, 12);
    assert_eq!(t.graph.num_edges(), 2 * 11, "undirected links stored both ways");
    assert_eq!((t.feature_dim, t.classes), (4, 3));
    assert_eq!(t.split, ((0..6).collect(), vec![6, 7, 8], vec![9, 10, 11]));
    // Rows are stored permuted; id_map puts node i's features [i, i/2, -i, 1] back in place.
    for i in 0..12 {
        let row = &t.features[i * 4..(i + 1) * 4];
        assert_eq!(row, &[i as f32, i as f32 * 0.5, -(i as f32), 1.0], "node {i}");
    }
    let Labels::Multi(y) = &t.labels else { panic!("PPI is multi-label") };
    for i in 0..12 {
        assert_eq!(&y[i * 3..(i + 1) * 3], &[(i % 2) as f32, (i % 3 == 0) as u8 as f32, 1.0]);
    }
    // The three graphs are the three components.
    assert_eq!(t.graph.components().len(), 3);
    // Standardisation uses training statistics: training columns get mean 0.
    let s = load_graphsage(&fixture("ppi-mini"), "ppi", true).unwrap();
    let mean0: f32 = (0..6).map(|i| s.features[i * 4]).sum::<f32>() / 6.0;
    assert!(mean0.abs() < 1e-6, "{mean0}");
}

fn broken_copy(src: &str, tag: &str, file: &str, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ignn-{src}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture(src)).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&p).unwrap();
        if name == file {
            let out = edit(bytes);
            if !out.is_empty() {
                std::fs::write(dir.join(&name), out).unwrap();
            }
        } else {
            std::fs::write(dir.join(&name), bytes).unwrap();
        }
    }
    dir
}

fn text_edit(from: &'static str, to: &'static str) -> impl Fn(Vec<u8>) -> Vec<u8> {
    move |b| String::from_utf8(b).unwrap().replacen(from, to, 1).into_bytes()
}

#[test]
fn graphsage_errors_name_the_file() {
    let err = |tag: &str, file: &str, edit: &dyn Fn(Vec<u8>) -> Vec<u8>| load_graphsage(&broken_copy("ppi-mini", tag, file, edit), "ppi", false).unwrap_err().to_string();
    let e = err("link", "ppi-G.json", &text_edit("\"target\": 5", "\"target\": 99"));
    assert!(e.contains("ppi-G.json") && e.contains("99"), "{e}");
    let e = err("syntax", "ppi-G.json", &|b: Vec<u8>| b[..b.len() / 2].to_vec());
    assert!(e.contains("ppi-G.json:1"), "{e}");
    let e = err("trunc", "ppi-feats.npy", &|b: Vec<u8>| b[..b.len() - 8].to_vec());
    assert!(e.contains("ppi-feats.npy") && e.contains("truncated"), "{e}");
    let e = err("idmap", "ppi-id_map.json", &text_edit("\"4\": 11", "\"4\": 40"));
    assert!(e.contains("ppi-id_map.json") && e.contains("row 40"), "{e}");
    let e = err("labels", "ppi-class_map.json", &text_edit("\"5\": [1, 0, 1]", "\"5\": [1, 0]"));
    assert!(e.contains("ppi-class_map.json") && e.contains("node 5"), "{e}");
    let e = err("missing", "ppi-id_map.json", &|_| Vec::new());
    assert!(e.contains("ppi-id_map.json"), "{e}");
}

#[test]
fn tu_fixture_reads_as_written() {
    let d = load_tu(&fixture("tu-mini"), "MINI").unwrap();
    assert_eq!(d.graphs.len(), 4);
    assert_eq!((d.classes, d.label_values.clone()), (2, vec![-1, 1]));
    // One-hot of node labels {0, 1, 7} then 2 attributes.
    assert_eq!(d.feature_dim, 5);
    let labels: Vec<u32> = d.graphs.iter().map(|g| g.label).collect();
    assert_eq!(labels, vec![1, 0, 1, 0]);
    let edges: Vec<usize> = d.graphs.iter().map(|g| g.graph.num_edges()).collect();
    assert_eq!(edges, vec![6, 4, 6, 4]);
    let g1 = &d.graphs[1];
    assert_eq!(g1.graph.n, 3);
    assert!(g1.graph.src.iter().chain(&g1.graph.dst).all(|&v| v < 3), "local ids");
    // Node 5 (global, 1-based) is graph 2's second node: label 1, attributes (2.5, -1).
    assert_eq!(&g1.features[5..10], &[0.0, 1.0, 0.0, 2.5, -1.0]);
}

#[test]
fn tu_errors_name_file_and_line() {
    let err = |tag: &str, file: &str, edit: &dyn Fn(Vec<u8>) -> Vec<u8>| load_tu(&broken_copy("tu-mini", tag, file, edit), "MINI").unwrap_err().to_string();
    let e = err("range", "MINI_A.txt", &text_edit("2, 3\n", "2, 30\n"));
    assert!(e.contains("MINI_A.txt:3") && e.contains("30"), "{e}");
    let e = err("cross", "MINI_A.txt", &text_edit("2, 3\n", "2, 4\n"));
    assert!(e.contains("MINI_A.txt:3") && e.contains("joins graphs"), "{e}");
    let e = err("malformed", "MINI_A.txt", &text_edit("1, 2\n", "1 2\n"));
    assert!(e.contains("MINI_A.txt:1"), "{e}");
    let e = err("indicator", "MINI_graph_indicator.txt", &text_edit("1\n", "9\n"));
    assert!(e.contains("MINI_graph_indicator.txt:1") && e.contains("graph 9"), "{e}");
    let e = err("count", "MINI_node_labels.txt", &|b: Vec<u8>| b[2..].to_vec());
    assert!(e.contains("MINI_node_labels.txt") && e.contains("11 node labels for 12 nodes"), "{e}");
    let e = err("attr", "MINI_node_attributes.txt", &text_edit("1.0, -1.0", "1.0, x"));
    assert!(e.contains("MINI_node_attributes.txt:2") && e.contains("`x`"), "{e}");
    let e = err("gone", "MINI_graph_labels.txt", &|_| Vec::new());
    assert!(e.contains("MINI_graph_labels.txt"), "{e}");
}
