//! Reader of the TU graph-classification format (Morris et al., "TUDataset"): a folder `DS/`
//! with
//!
//! | file | content |
//! |---|---|
//! | `DS_A.txt` | `i, j` per line: a directed edge between global node ids (1-based); undirected datasets list both directions |
//! | `DS_graph_indicator.txt` | line `i`: the graph (1-based) of node `i` |
//! | `DS_graph_labels.txt` | line `g`: the class of graph `g` (any integers, e.g. `-1`/`1`) |
//! | `DS_node_labels.txt` | optional; line `i`: an integer label of node `i` (one-hot encoded as features) |
//! | `DS_node_attributes.txt` | optional; line `i`: comma-separated real attributes of node `i` |
//! | `DS_edge_weights.txt` | optional (not in the official spec, accepted for users' data); line `k`: the weight of edge `k` |
//!
//! Node features are the one-hot node labels followed by the attributes; a dataset with
//! neither gets one-hot node degrees (as GIN does for the social datasets). Graph classes are
//! the sorted distinct graph labels, renumbered from 0. Errors name the file and line.

use crate::error::{bad, read, GraphFileError};
use crate::graph::Graph;
use std::collections::BTreeSet;
use std::path::Path;

/// One graph of a graph-classification dataset.
#[derive(Debug, Clone)]
pub struct GraphSample {
    /// The graph with local node ids.
    pub graph: Graph,
    /// Node features `(graph.n, feature_dim)`, row-major.
    pub features: Vec<f32>,
    /// Class in `0..classes`.
    pub label: u32,
}

/// A graph-classification dataset.
#[derive(Debug, Clone)]
pub struct GraphDataset {
    /// The graphs.
    pub graphs: Vec<GraphSample>,
    /// Node feature dimension.
    pub feature_dim: usize,
    /// Number of classes.
    pub classes: usize,
    /// The original label of each class.
    pub label_values: Vec<i64>,
}

fn lines(path: &Path) -> Result<Vec<(usize, String)>, GraphFileError> {
    Ok(read(path)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l.trim().to_string())).collect())
}

fn int(path: &Path, line: usize, tok: &str) -> Result<i64, GraphFileError> {
    tok.trim().parse().map_err(|_| bad(path, line, format!("`{}` is not an integer", tok.trim())))
}

/// Loads dataset `name` from `dir` (files `dir/<name>_*.txt`).
pub fn load_tu(dir: &Path, name: &str) -> Result<GraphDataset, GraphFileError> {
    let file = |s: &str| dir.join(format!("{name}_{s}.txt"));
    let ip = file("graph_indicator");
    let indicator: Vec<(usize, i64)> = lines(&ip)?.iter().map(|(ln, l)| int(&ip, *ln, l).map(|g| (*ln, g))).collect::<Result<_, _>>()?;
    let lp = file("graph_labels");
    let raw_labels: Vec<i64> = lines(&lp)?.iter().map(|(ln, l)| int(&lp, *ln, l)).collect::<Result<_, _>>()?;
    let num_graphs = raw_labels.len();
    let n = indicator.len();
    // Local id of every node within its graph.
    let mut sizes = vec![0usize; num_graphs];
    let mut local = vec![0u32; n];
    let mut graph_of = vec![0usize; n];
    for (i, &(ln, g)) in indicator.iter().enumerate() {
        if g < 1 || g as usize > num_graphs {
            return Err(bad(&ip, ln, format!("graph {g} out of range ({} has {num_graphs} graphs)", lp.display())));
        }
        let g = g as usize - 1;
        graph_of[i] = g;
        local[i] = sizes[g] as u32;
        sizes[g] += 1;
    }

    let ap = file("A");
    let wp = file("edge_weights");
    let weights: Option<Vec<f32>> = if wp.exists() {
        Some(lines(&wp)?.iter().map(|(ln, l)| l.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(&wp, *ln, format!("`{l}` is not a finite number")))).collect::<Result<_, _>>()?)
    } else {
        None
    };
    let mut graphs: Vec<Graph> = sizes.iter().map(|&s| Graph { n: s, src: Vec::new(), dst: Vec::new(), weight: Vec::new() }).collect();
    let edge_lines = lines(&ap)?;
    if let Some(w) = &weights {
        if w.len() != edge_lines.len() {
            return Err(bad(&wp, 0, format!("{} weights for {} edges in {}", w.len(), edge_lines.len(), ap.display())));
        }
    }
    for (k, (ln, l)) in edge_lines.iter().enumerate() {
        let (a, b) = l.split_once(',').ok_or_else(|| bad(&ap, *ln, format!("expected `i, j`, got `{l}`")))?;
        let (a, b) = (int(&ap, *ln, a)?, int(&ap, *ln, b)?);
        for v in [a, b] {
            if v < 1 || v as usize > n {
                return Err(bad(&ap, *ln, format!("node {v} out of range ({} has {n} nodes)", ip.display())));
            }
        }
        let (a, b) = (a as usize - 1, b as usize - 1);
        if graph_of[a] != graph_of[b] {
            return Err(bad(&ap, *ln, format!("edge joins graphs {} and {} (as {} assigns its nodes)", graph_of[a] + 1, graph_of[b] + 1, ip.display())));
        }
        let g = &mut graphs[graph_of[a]];
        g.src.push(local[a]);
        g.dst.push(local[b]);
        g.weight.push(weights.as_ref().map_or(1.0, |w| w[k]));
    }

    // Features: one-hot node labels, then attributes; one-hot degrees if neither exists.
    let np = file("node_labels");
    let node_labels: Option<Vec<i64>> = if np.exists() {
        let v: Vec<i64> = lines(&np)?.iter().map(|(ln, l)| int(&np, *ln, l.split(',').next().unwrap_or(""))).collect::<Result<_, _>>()?;
        if v.len() != n {
            return Err(bad(&np, 0, format!("{} node labels for {n} nodes in {}", v.len(), ip.display())));
        }
        Some(v)
    } else {
        None
    };
    let atp = file("node_attributes");
    let attrs: Option<(Vec<f32>, usize)> = if atp.exists() {
        let mut data = Vec::new();
        let mut width = None;
        let ls = lines(&atp)?;
        for (ln, l) in &ls {
            let row: Vec<f32> = l.split(',').map(|t| t.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(&atp, *ln, format!("`{}` is not a finite number", t.trim())))).collect::<Result<_, _>>()?;
            if *width.get_or_insert(row.len()) != row.len() {
                return Err(bad(&atp, *ln, format!("{} attributes, earlier lines have {}", row.len(), width.unwrap_or(0))));
            }
            data.extend(row);
        }
        if ls.len() != n {
            return Err(bad(&atp, 0, format!("{} attribute rows for {n} nodes in {}", ls.len(), ip.display())));
        }
        Some((data, width.unwrap_or(0)))
    } else {
        None
    };
    let label_set: Vec<i64> = node_labels.as_ref().map(|v| v.iter().copied().collect::<BTreeSet<_>>().into_iter().collect()).unwrap_or_default();
    let degree: Vec<usize> = if node_labels.is_none() && attrs.is_none() {
        let mut d = vec![0usize; n];
        let mut offset = 0;
        let mut offsets = vec![0usize; num_graphs];
        for (g, s) in sizes.iter().enumerate() {
            offsets[g] = offset;
            offset += s;
        }
        // Degrees by (graph, local id), mapped back to global order below.
        let mut by_local = vec![0usize; n];
        for (gi, g) in graphs.iter().enumerate() {
            for &s in &g.src {
                by_local[offsets[gi] + s as usize] += 1;
            }
        }
        for i in 0..n {
            d[i] = by_local[offsets[graph_of[i]] + local[i] as usize];
        }
        d
    } else {
        Vec::new()
    };
    let max_degree = degree.iter().copied().max().unwrap_or(0);
    let attr_w = attrs.as_ref().map_or(0, |a| a.1);
    let feature_dim = if degree.is_empty() { label_set.len() + attr_w } else { max_degree + 1 };
    // The one-hot widths follow from the data (distinct labels, the largest degree), so the
    // feature matrices can be far larger than the files: allocated fallibly.
    let fdp = if degree.is_empty() { if node_labels.is_some() { &np } else { &atp } } else { &ap };
    let mut feats: Vec<Vec<f32>> = Vec::with_capacity(num_graphs);
    let total = n.checked_mul(feature_dim).and_then(|v| v.checked_mul(4)).ok_or_else(|| bad(fdp, 0, format!("node features: {n} x {feature_dim} overflows")))?;
    deq_train::data::alloc::check_fits(total, "node features").map_err(|m| bad(fdp, 0, m))?;
    for &s in &sizes {
        feats.push(deq_train::data::try_zeros::<f32>(&[s, feature_dim], "node features").map_err(|m| bad(fdp, 0, m))?);
    }
    for i in 0..n {
        let row = &mut feats[graph_of[i]][local[i] as usize * feature_dim..(local[i] as usize + 1) * feature_dim];
        if !degree.is_empty() {
            row[degree[i]] = 1.0;
            continue;
        }
        if let Some(v) = &node_labels {
            row[label_set.binary_search(&v[i]).unwrap_or(0)] = 1.0;
        }
        if let Some((a, w)) = &attrs {
            row[label_set.len()..].copy_from_slice(&a[i * w..(i + 1) * w]);
        }
    }
    let label_values: Vec<i64> = raw_labels.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let graphs = graphs
        .into_iter()
        .zip(feats)
        .zip(&raw_labels)
        .map(|((graph, features), l)| GraphSample { graph, features, label: label_values.binary_search(l).unwrap_or(0) as u32 })
        .collect();
    Ok(GraphDataset { graphs, feature_dim, classes: label_values.len(), label_values })
}
