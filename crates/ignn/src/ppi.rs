//! Reader of the GraphSAGE dataset format (PPI, Reddit), as published with GraphSAGE
//! (Hamilton et al., 2017) and used by the IGNN paper's PPI experiment:
//!
//! | file | content |
//! |---|---|
//! | `<prefix>-G.json` | networkx `node_link_data`: `{"directed": false, "nodes": [{"id": 0, "val": false, "test": false}, ...], "links": [{"source": 0, "target": 5}, ...]}` |
//! | `<prefix>-feats.npy` | `(rows, F)` float array; row `id_map[id]` holds node `id`'s features |
//! | `<prefix>-id_map.json` | `{"<id>": row, ...}` |
//! | `<prefix>-class_map.json` | `{"<id>": [0, 1, ...]}` (multi-label, PPI's 121 labels) or `{"<id>": class}` |
//!
//! Nodes flagged `"val": true` form the validation split, `"test": true` the test split, the
//! rest the training split (GraphSAGE's convention; PPI's 20/2/2 graphs are disconnected, so
//! the splits are the zoo's graph-level split). `links` may also be called `edges` (networkx
//! 3.4+); their endpoints are node ids (networkx 2+; for PPI ids equal positions, so files from
//! networkx 1.x read the same). Undirected graphs get both directions of every link.
//!
//! Errors name the file and, for JSON syntax errors, the line.

use crate::error::{bad, read, GraphFileError};
use crate::graph::Graph;
use crate::train::{Labels, NodeTask};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct GraphJson {
    #[serde(default)]
    directed: bool,
    nodes: Vec<NodeJson>,
    #[serde(alias = "edges")]
    links: Vec<LinkJson>,
}

#[derive(Deserialize)]
struct NodeJson {
    id: serde_json::Value,
    #[serde(default)]
    val: Option<bool>,
    #[serde(default)]
    test: Option<bool>,
}

#[derive(Deserialize)]
struct LinkJson {
    source: serde_json::Value,
    target: serde_json::Value,
}

fn key(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, GraphFileError> {
    let text = read(path)?;
    serde_json::from_str(&text).map_err(|e| bad(path, e.line(), e.to_string()))
}

/// Loads `<dir>/<prefix>-{G.json,feats.npy,id_map.json,class_map.json}`. With `standardize`,
/// features are shifted and scaled per column by the training nodes' mean and standard
/// deviation (GraphSAGE's preprocessing; PyTorch Geometric's PPI, used by the zoo, keeps them
/// raw).
pub fn load_graphsage(dir: &Path, prefix: &str, standardize: bool) -> Result<NodeTask, GraphFileError> {
    let gp = dir.join(format!("{prefix}-G.json"));
    let g: GraphJson = parse_json(&gp)?;
    let n = g.nodes.len();
    let mut index: HashMap<String, u32> = HashMap::with_capacity(n);
    for (i, node) in g.nodes.iter().enumerate() {
        if index.insert(key(&node.id), i as u32).is_some() {
            return Err(bad(&gp, 0, format!("node {} appears twice in `nodes`", key(&node.id))));
        }
    }
    let mut edges = Vec::with_capacity(g.links.len());
    for (k, l) in g.links.iter().enumerate() {
        let end = |v: &serde_json::Value| index.get(&key(v)).copied().ok_or_else(|| bad(&gp, 0, format!("link {k}: endpoint {} is not a node id", key(v))));
        edges.push((end(&l.source)?, end(&l.target)?));
    }
    let graph = Graph::from_edges(n, &edges).map_err(|m| bad(&gp, 0, m))?;
    let graph = if g.directed { graph } else { graph.symmetrized() };

    let ip = dir.join(format!("{prefix}-id_map.json"));
    let id_map: HashMap<String, i64> = parse_json(&ip)?;
    let fp = dir.join(format!("{prefix}-feats.npy"));
    let feats = deq_train::data::read_npy(&fp).map_err(|e| match e {
        deq_train::TrainError::Io { path, source } => GraphFileError::Io { path, source },
        other => bad(&fp, 0, other.to_string()),
    })?;
    if feats.shape.len() != 2 {
        return Err(bad(&fp, 0, format!("features must be a 2-d array, got shape {:?}", feats.shape)));
    }
    let (rows, f) = (feats.shape[0], feats.shape[1]);
    if n > 0 && rows == 0 {
        return Err(bad(&fp, 0, format!("no feature rows for {n} nodes (shape {:?})", feats.shape)));
    }
    if let Some(bad_v) = feats.data.iter().find(|v| !v.is_finite()) {
        return Err(bad(&fp, 0, format!("features hold a non-finite value ({bad_v})")));
    }
    let mut features = deq_train::data::try_zeros::<f32>(&[n, f], "features").map_err(|m| bad(&fp, 0, m))?;
    for (i, node) in g.nodes.iter().enumerate() {
        let id = key(&node.id);
        let r = *id_map.get(&id).ok_or_else(|| bad(&ip, 0, format!("node {id} of {} has no entry", gp.display())))?;
        if r < 0 || r as usize >= rows {
            return Err(bad(&ip, 0, format!("node {id} maps to row {r}, {} has {rows} rows", fp.display())));
        }
        features[i * f..(i + 1) * f].copy_from_slice(&feats.data[r as usize * f..(r as usize + 1) * f]);
    }

    let cp = dir.join(format!("{prefix}-class_map.json"));
    let class_map: HashMap<String, serde_json::Value> = parse_json(&cp)?;
    let first = g.nodes.first().map(|nd| key(&nd.id)).and_then(|id| class_map.get(&id));
    let multi = matches!(first, Some(serde_json::Value::Array(_)));
    let lookup = |id: &str| class_map.get(id).ok_or_else(|| bad(&cp, 0, format!("node {id} of {} has no entry", gp.display())));
    let (labels, classes) = if multi {
        let c = first.and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0);
        let mut t = deq_train::data::try_zeros::<f32>(&[n, c], "multi-label targets").map_err(|m| bad(&cp, 0, m))?;
        for (i, node) in g.nodes.iter().enumerate() {
            let id = key(&node.id);
            let arr = lookup(&id)?.as_array().filter(|a| a.len() == c).ok_or_else(|| bad(&cp, 0, format!("node {id}: expected a list of {c} labels")))?;
            for (j, v) in arr.iter().enumerate() {
                t[i * c + j] = v.as_f64().filter(|x| *x == 0.0 || *x == 1.0).ok_or_else(|| bad(&cp, 0, format!("node {id}: label {j} is {v}, not 0 or 1")))? as f32;
            }
        }
        (Labels::Multi(t), c)
    } else {
        let mut l = Vec::with_capacity(n);
        for node in &g.nodes {
            let id = key(&node.id);
            let v = lookup(&id)?.as_u64().ok_or_else(|| bad(&cp, 0, format!("node {id}: class is not a non-negative integer")))?;
            // Class ids are dense (0..C with C <= nodes): a larger id would size the output
            // layer by a number the file does not justify.
            if v >= n as u64 {
                return Err(bad(&cp, 0, format!("node {id}: class {v} is not below the node count {n} of {}", gp.display())));
            }
            l.push(v as u32);
        }
        let c = l.iter().copied().max().map_or(0, |m| m as usize + 1);
        (Labels::Single(l), c)
    };

    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (i, node) in g.nodes.iter().enumerate() {
        match (node.val.unwrap_or(false), node.test.unwrap_or(false)) {
            (_, true) => test.push(i as u32),
            (true, false) => val.push(i as u32),
            _ => train.push(i as u32),
        }
    }
    if standardize && !train.is_empty() {
        for j in 0..f {
            let mean = train.iter().map(|&i| features[i as usize * f + j] as f64).sum::<f64>() / train.len() as f64;
            let var = train.iter().map(|&i| (features[i as usize * f + j] as f64 - mean).powi(2)).sum::<f64>() / train.len() as f64;
            let sd = if var > 0.0 { var.sqrt() } else { 1.0 };
            for i in 0..n {
                features[i * f + j] = ((features[i * f + j] as f64 - mean) / sd) as f32;
            }
        }
    }
    Ok(NodeTask { graph, features, feature_dim: f, labels, classes, split: (train, val, test) })
}
