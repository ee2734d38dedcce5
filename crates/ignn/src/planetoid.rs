//! Reader of the plain-text Planetoid format (Cora, CiteSeer, PubMed with the public split),
//! also the documented format for bringing any graph:
//!
//! | file | content |
//! |---|---|
//! | `meta.txt` | `key value` lines; needs `nodes N`, `features F`, `classes C` |
//! | `edges.txt` | `u v` per line, 0-based (undirected: each edge once; add `directed true` to `meta.txt` to keep one direction) |
//! | `self_loops.txt` | optional, one node id per line |
//! | `features.txt` | `node k i1:v1 ... ik:vk` (sparse rows; missing nodes are all-zero) |
//! | `labels.txt` | one class per line for nodes `0..N`, `-1` = unlabelled |
//! | `split.txt` | `train i,j,...`, `val ...`, `test ...` |
//!
//! Every error names the file and line.

use crate::graph::Graph;
use crate::train::{Labels, NodeTask};
use crate::error::{bad, read, GraphFileError};
use std::collections::HashMap;
use std::path::Path;

fn node(path: &Path, line: usize, tok: &str, n: usize) -> Result<u32, GraphFileError> {
    let v: usize = tok.trim().parse().map_err(|_| bad(path, line, format!("`{tok}` is not a node id")))?;
    if v >= n {
        return Err(bad(path, line, format!("node id {v} out of range (nodes = {n} in meta.txt)")));
    }
    Ok(v as u32)
}

/// Loads a dataset folder; features are row-normalised (rows summing to one; all-zero rows
/// stay zero), as in GCN and IGNN.
pub fn load_planetoid(dir: &Path) -> Result<NodeTask, GraphFileError> {
    let meta_path = dir.join("meta.txt");
    let meta: HashMap<String, String> = read(&meta_path)?
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let num = |k: &str| -> Result<usize, GraphFileError> {
        meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| bad(&meta_path, 0, format!("needs an integer `{k}`")))
    };
    let (n, f, classes) = (num("nodes")?, num("features")?, num("classes")?);
    let directed = meta.get("directed").map(|v| v == "true").unwrap_or(false);
    // Bounded allocation: the node count must match the label file before anything is sized
    // by it; the class count cannot exceed the nodes; the dense feature matrix is allocated
    // fallibly.
    let lp = dir.join("labels.txt");
    let label_text = read(&lp)?;
    let raw: Vec<&str> = label_text.lines().filter(|l| !l.trim().is_empty()).collect();
    if raw.len() != n {
        return Err(bad(&lp, 0, format!("{} labels for the {n} nodes of {}", raw.len(), meta_path.display())));
    }
    if f == 0 || classes == 0 || classes > n.max(1) {
        return Err(bad(&meta_path, 0, format!("needs features >= 1 and 1 <= classes <= nodes, got features {f}, classes {classes}, nodes {n}")));
    }

    let ep = dir.join("edges.txt");
    let mut edges = Vec::new();
    for (i, l) in read(&ep)?.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let t: Vec<&str> = l.split_whitespace().collect();
        if t.len() != 2 {
            return Err(bad(&ep, i + 1, format!("expected `u v`, got `{l}`")));
        }
        edges.push((node(&ep, i + 1, t[0], n)?, node(&ep, i + 1, t[1], n)?));
    }
    let sp = dir.join("self_loops.txt");
    if sp.exists() {
        for (i, l) in read(&sp)?.lines().enumerate() {
            if !l.trim().is_empty() {
                let u = node(&sp, i + 1, l.split_whitespace().next().unwrap_or(""), n)?;
                edges.push((u, u));
            }
        }
    }
    let g = Graph::from_edges(n, &edges).map_err(|m| bad(&ep, 0, m))?;
    let graph = if directed { g } else { without_duplicate_loops(g.symmetrized()) };

    let fp = dir.join("features.txt");
    let mut features = deq_train::data::try_zeros::<f32>(&[n, f], "features").map_err(|m| bad(&meta_path, 0, m))?;
    for (i, l) in read(&fp)?.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let mut t = l.split_whitespace();
        let u = node(&fp, i + 1, t.next().unwrap_or(""), n)? as usize;
        let k: usize = t.next().and_then(|v| v.parse().ok()).ok_or_else(|| bad(&fp, i + 1, "expected `node k idx:val ...`"))?;
        let entries: Vec<&str> = t.collect();
        if entries.len() != k {
            return Err(bad(&fp, i + 1, format!("declares {k} entries, has {}", entries.len())));
        }
        for e in entries {
            let (a, b) = e.split_once(':').ok_or_else(|| bad(&fp, i + 1, format!("`{e}` is not idx:val")))?;
            let j: usize = a.parse().map_err(|_| bad(&fp, i + 1, format!("`{a}` is not a feature index")))?;
            if j >= f {
                return Err(bad(&fp, i + 1, format!("feature index {j} out of range (features = {f} in meta.txt)")));
            }
            features[u * f + j] = b.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(&fp, i + 1, format!("`{b}` is not a finite number")))?;
        }
    }
    for row in features.chunks_mut(f) {
        let s: f32 = row.iter().sum();
        if s != 0.0 {
            row.iter_mut().for_each(|v| *v /= s);
        }
    }

    let mut labels = Vec::with_capacity(n);
    let mut unlabelled = vec![false; n];
    for (i, l) in raw.iter().enumerate() {
        let v: i64 = l.trim().parse().map_err(|_| bad(&lp, i + 1, format!("`{l}` is not a class")))?;
        if v < -1 || v >= classes as i64 {
            return Err(bad(&lp, i + 1, format!("class {v} out of range (classes = {classes} in meta.txt)")));
        }
        unlabelled[i] = v < 0;
        labels.push(v.max(0) as u32);
    }

    let spp = dir.join("split.txt");
    let mut parts: HashMap<String, Vec<u32>> = HashMap::new();
    for (i, l) in read(&spp)?.lines().enumerate() {
        let Some((name, ids)) = l.split_once(' ') else { continue };
        let ids = ids.split(',').filter(|s| !s.trim().is_empty()).map(|s| node(&spp, i + 1, s, n)).collect::<Result<Vec<_>, _>>()?;
        if let Some(&u) = ids.iter().find(|&&u| unlabelled[u as usize]) {
            return Err(bad(&spp, i + 1, format!("node {u} of `{name}` has no label in {}", lp.display())));
        }
        parts.insert(name.to_string(), ids);
    }
    let mut take = |k: &str| parts.remove(k).ok_or_else(|| bad(&spp, 0, format!("no `{k}` line")));
    let split = (take("train")?, take("val")?, take("test")?);
    Ok(NodeTask { graph, features, feature_dim: f, labels: Labels::Single(labels), classes, split })
}

fn without_duplicate_loops(mut g: Graph) -> Graph {
    // Symmetrising doubles self loops; keep each once.
    let mut seen = std::collections::HashSet::new();
    let keep: Vec<bool> = (0..g.num_edges()).map(|k| g.src[k] != g.dst[k] || seen.insert(g.src[k])).collect();
    let mut i = 0;
    g.src.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    let mut i = 0;
    g.dst.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    let mut i = 0;
    g.weight.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    g
}
