//! The layouts of the public optical-flow datasets, as RAFT and DEQ-Flow read them, and a
//! generic folder layout. Each reader lists frame pairs with their ground truth; files are only
//! opened when a pair is loaded ([`load_pair`]). A missing folder is an error naming it.
//!
//! | dataset | layout under its root |
//! |---|---|
//! | FlyingChairs | `data/NNNNN_img1.ppm`, `NNNNN_img2.ppm`, `NNNNN_flow.flo`; `chairs_split.txt` (one line per pair: 1 training, 2 validation) in the root |
//! | FlyingThings3D | `frames_{cleanpass,finalpass}/TRAIN/<A,B,C>/<seq>/left/*.png`, `optical_flow/TRAIN/<A,B,C>/<seq>/into_{future,past}/left/*.pfm` |
//! | MPI-Sintel | `{training,test}/{clean,final}/<scene>/frame_NNNN.png`, `training/flow/<scene>/frame_NNNN.flo`, `training/invalid/<scene>/frame_NNNN.png` |
//! | KITTI-2015 | `{training,testing}/image_2/NNNNNN_{10,11}.png`, `training/flow_occ/NNNNNN_10.png` |
//! | HD1K | `hd1k_input/image_2/SSSSSS_NNNN.png`, `hd1k_flow_gt/flow_occ/SSSSSS_NNNN.png` |
//! | folder | any folder whose sub-folders (or itself) hold two or more frames; ground truth, when present, in the same folder or in a sibling `gt/` (`.flo`, `.pfm` or KITTI `.png`), the k-th file for the k-th pair; `gt/invalid/` masks are read when present |

use std::path::{Path, PathBuf};

use deq_train::data::list_dir;

use crate::error::{FlowError, Result};
use crate::flow::Flow;
use crate::io::frames::Frame;

/// One frame pair and where its ground truth is.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSpec {
    /// Frame 1.
    pub img1: PathBuf,
    /// Frame 2.
    pub img2: PathBuf,
    /// Ground-truth flow, if known.
    pub flow: Option<PathBuf>,
    /// A mask of pixels to exclude (non-zero = excluded), if any.
    pub invalid: Option<PathBuf>,
    /// Sparse ground truth (KITTI, HD1K): the sparse augmentation applies.
    pub sparse: bool,
    /// A name for reports (`scene/frame`, `pair/pass`, …).
    pub name: String,
}

fn with_ext(v: &[PathBuf], exts: &[&str]) -> Vec<PathBuf> {
    v.iter().filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))).cloned().collect()
}

fn dirs(v: &[PathBuf]) -> Vec<PathBuf> {
    v.iter().filter(|p| p.is_dir()).cloned().collect()
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn need(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(FlowError::format(dir, "dataset folder not found (see datasets/README.md for the layouts and where to get them)"))
    }
}

/// Training or validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training pairs.
    Training,
    /// Validation / test pairs.
    Validation,
}

/// FlyingChairs (`FlyingChairs_release`): pairs of the split in `chairs_split.txt`.
pub fn flying_chairs(root: &Path, split: Split) -> Result<Vec<PairSpec>> {
    let data = root.join("data");
    need(&data)?;
    let files = list_dir(&data)?;
    let images = with_ext(&files, &["ppm"]);
    let flows = with_ext(&files, &["flo"]);
    if images.len() != 2 * flows.len() || flows.is_empty() {
        return Err(FlowError::format(&data, format!("{} frames and {} flows: FlyingChairs has two frames per flow", images.len(), flows.len())));
    }
    let split_file = root.join("chairs_split.txt");
    let text = std::fs::read_to_string(&split_file).map_err(|e| FlowError::io(&split_file, e))?;
    let ids: Vec<&str> = text.split_whitespace().collect();
    if ids.len() != flows.len() {
        return Err(FlowError::format(&split_file, format!("{} entries for {} pairs", ids.len(), flows.len())));
    }
    let want = if split == Split::Training { "1" } else { "2" };
    let mut out = Vec::new();
    for (i, (id, flow)) in ids.iter().zip(&flows).enumerate() {
        if *id != "1" && *id != "2" {
            return Err(FlowError::format(&split_file, format!("line {}: {id:?} is neither 1 nor 2", i + 1)));
        }
        if *id == want {
            out.push(PairSpec { img1: images[2 * i].clone(), img2: images[2 * i + 1].clone(), flow: Some(flow.clone()), invalid: None, sparse: false, name: stem(flow) });
        }
    }
    Ok(out)
}

/// FlyingThings3D, left camera, `TRAIN` (or `TEST` for validation), both directions.
pub fn flying_things(root: &Path, pass: &str, split: Split) -> Result<Vec<PairSpec>> {
    let part = if split == Split::Training { "TRAIN" } else { "TEST" };
    let frames_root = root.join(format!("frames_{pass}pass")).join(part);
    let flow_root = root.join("optical_flow").join(part);
    need(&frames_root)?;
    need(&flow_root)?;
    let mut out = Vec::new();
    for direction in ["into_future", "into_past"] {
        for letter in dirs(&list_dir(&frames_root)?) {
            for seq in dirs(&list_dir(&letter)?) {
                let rel = seq.strip_prefix(&frames_root).expect("under the root").to_path_buf();
                let images = with_ext(&list_dir(&seq.join("left"))?, &["png"]);
                let fdir = flow_root.join(&rel).join(direction).join("left");
                let flows = with_ext(&list_dir(&fdir)?, &["pfm"]);
                if flows.len() != images.len() {
                    return Err(FlowError::format(&fdir, format!("{} flows for {} frames", flows.len(), images.len())));
                }
                for i in 0..images.len().saturating_sub(1) {
                    let (a, b, f) = if direction == "into_future" { (i, i + 1, i) } else { (i + 1, i, i + 1) };
                    out.push(PairSpec { img1: images[a].clone(), img2: images[b].clone(), flow: Some(flows[f].clone()), invalid: None, sparse: false, name: format!("{}/{direction}/{}", rel.display(), stem(&images[a])) });
                }
            }
        }
    }
    Ok(out)
}

/// MPI-Sintel: `split` is `training` or `test`, `pass` `clean` or `final`.
pub fn sintel(root: &Path, split: &str, pass: &str) -> Result<Vec<PairSpec>> {
    let image_root = root.join(split).join(pass);
    need(&image_root)?;
    let mut out = Vec::new();
    for scene in dirs(&list_dir(&image_root)?) {
        let name = scene.file_name().expect("a scene").to_string_lossy().into_owned();
        let frames = with_ext(&list_dir(&scene)?, &["png"]);
        for i in 0..frames.len().saturating_sub(1) {
            let (flow, invalid) = if split == "test" {
                (None, None)
            } else {
                let f = root.join(split).join("flow").join(&name).join(format!("{}.flo", stem(&frames[i])));
                let inv = root.join(split).join("invalid").join(&name).join(format!("{}.png", stem(&frames[i])));
                (Some(f), inv.is_file().then_some(inv))
            };
            out.push(PairSpec { img1: frames[i].clone(), img2: frames[i + 1].clone(), flow, invalid, sparse: false, name: format!("{name}/{}", stem(&frames[i])) });
        }
    }
    Ok(out)
}

/// KITTI-2015: `split` is `training` or `testing`.
pub fn kitti(root: &Path, split: &str) -> Result<Vec<PairSpec>> {
    let dir = root.join(split).join("image_2");
    need(&dir)?;
    let files = with_ext(&list_dir(&dir)?, &["png"]);
    let first: Vec<&PathBuf> = files.iter().filter(|p| stem(p).ends_with("_10")).collect();
    let mut out = Vec::new();
    for a in first {
        let s = stem(a);
        let id = &s[..s.len() - 3];
        let b = dir.join(format!("{id}_11.png"));
        if !b.is_file() {
            return Err(FlowError::format(&b, "missing second frame"));
        }
        let flow = (split == "training").then(|| root.join(split).join("flow_occ").join(format!("{id}_10.png")));
        out.push(PairSpec { img1: a.clone(), img2: b, flow, invalid: None, sparse: true, name: id.to_string() });
    }
    Ok(out)
}

/// HD1K: consecutive frames of each sequence with their sparse flow.
pub fn hd1k(root: &Path) -> Result<Vec<PairSpec>> {
    let fdir = root.join("hd1k_flow_gt").join("flow_occ");
    let idir = root.join("hd1k_input").join("image_2");
    need(&fdir)?;
    need(&idir)?;
    let flows = with_ext(&list_dir(&fdir)?, &["png"]);
    let images = with_ext(&list_dir(&idir)?, &["png"]);
    let seq = |p: &Path| stem(p).split('_').next().unwrap_or("").to_string();
    let mut out = Vec::new();
    let mut seqs: Vec<String> = flows.iter().map(|p| seq(p)).collect();
    seqs.dedup();
    for s in seqs {
        let fl: Vec<&PathBuf> = flows.iter().filter(|p| seq(p) == s).collect();
        let im: Vec<&PathBuf> = images.iter().filter(|p| seq(p) == s).collect();
        for i in 0..fl.len().saturating_sub(1) {
            if i + 1 >= im.len() {
                break;
            }
            out.push(PairSpec { img1: im[i].clone(), img2: im[i + 1].clone(), flow: Some(fl[i].clone()), invalid: None, sparse: true, name: stem(fl[i]) });
        }
    }
    Ok(out)
}

/// The generic folder layout (see the module table): every folder under `root` (itself
/// included, two levels deep) that holds two or more frames.
pub fn folder(root: &Path) -> Result<Vec<PairSpec>> {
    need(root)?;
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut cases = Vec::new();
    while let Some((dir, depth)) = stack.pop() {
        let files = list_dir(&dir)?;
        if with_ext(&files, &["png", "jpg", "jpeg", "ppm"]).len() >= 2 && dir.file_name().is_none_or(|n| n != "gt") {
            cases.push(dir.clone());
        }
        if depth < 2 {
            for d in dirs(&files).into_iter().rev() {
                if d.file_name().is_some_and(|n| n == "gt" || n == "invalid" || n == "occlusions") {
                    continue;
                }
                stack.push((d, depth + 1));
            }
        }
    }
    cases.sort();
    for dir in cases {
        let files = list_dir(&dir)?;
        let frames = with_ext(&files, &["png", "jpg", "jpeg", "ppm"]);
        // Ground truth next to the frames, or in a sibling `gt/` folder (one truth for
        // several render passes, as in Sintel).
        let here = with_ext(&files, &["flo", "pfm"]);
        let (gt, gt_dir) = if !here.is_empty() {
            (here, None)
        } else if let Some(parent) = dir.parent().map(|p| p.join("gt")).filter(|g| g.is_dir()) {
            (with_ext(&list_dir(&parent)?, &["flo", "pfm", "png"]), Some(parent))
        } else {
            (Vec::new(), None)
        };
        let rel = dir.strip_prefix(root).unwrap_or(&dir);
        let name = if rel.as_os_str().is_empty() { root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default() } else { rel.display().to_string() };
        for i in 0..frames.len() - 1 {
            let flow = gt.get(i).cloned();
            let invalid = match (&gt_dir, &flow) {
                (Some(g), Some(f)) => Some(g.join("invalid").join(format!("{}.png", stem(f)))).filter(|p| p.is_file()),
                _ => None,
            };
            let sparse = flow.as_ref().is_some_and(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")));
            let pname = if frames.len() > 2 { format!("{name}/{}", stem(&frames[i])) } else { name.clone() };
            out.push(PairSpec { img1: frames[i].clone(), img2: frames[i + 1].clone(), flow, invalid, sparse, name: pname });
        }
    }
    if out.is_empty() {
        return Err(FlowError::format(root, "no folder with two or more frames"));
    }
    Ok(out)
}

/// A loaded pair: frames and (if known) the flow with its validity.
#[derive(Debug, Clone)]
pub struct LoadedPair {
    /// Frame 1.
    pub img1: Frame,
    /// Frame 2.
    pub img2: Frame,
    /// Ground truth; `valid` is set for sparse files.
    pub flow: Option<Flow>,
    /// Pixels the benchmark excludes (1 = excluded), from the pair's invalid mask. RAFT's
    /// Sintel validation counts every pixel; evaluations report both.
    pub excluded: Option<Vec<f32>>,
}

/// Reads a pair's frames and ground truth; sizes must agree (errors name the file).
pub fn load_pair(spec: &PairSpec) -> Result<LoadedPair> {
    let img1 = Frame::read(&spec.img1)?;
    let img2 = Frame::read(&spec.img2)?;
    if (img1.height, img1.width) != (img2.height, img2.width) {
        return Err(FlowError::format(&spec.img2, format!("frame size {}x{} differs from the first frame's {}x{}", img2.height, img2.width, img1.height, img1.width)));
    }
    let flow = match &spec.flow {
        None => None,
        Some(p) => {
            let f = crate::io::read_flow(p)?;
            if (f.height, f.width) != (img1.height, img1.width) {
                return Err(FlowError::format(p, format!("flow size {}x{} differs from the frames' {}x{}", f.height, f.width, img1.height, img1.width)));
            }
            Some(f)
        }
    };
    let excluded = match &spec.invalid {
        None => None,
        Some(inv) => {
            let mask = Frame::read(inv)?;
            if (mask.height, mask.width) != (img1.height, img1.width) {
                return Err(FlowError::format(inv, "mask size differs from the frames'"));
            }
            Some(mask.rgb.chunks_exact(3).map(|px| if px.iter().any(|&c| c > 0) { 1.0 } else { 0.0 }).collect())
        }
    };
    Ok(LoadedPair { img1, img2, flow, excluded })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_png(p: &Path, w: u32, h: u32) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 9])).save(p).unwrap();
    }

    fn touch_flo(p: &Path, w: usize, h: usize) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        crate::io::flo::write(p, &Flow { height: h, width: w, uv: vec![0.5; w * h * 2], valid: None }).unwrap();
    }

    #[test]
    fn layouts_list_their_pairs() {
        let root = std::env::temp_dir().join(format!("deq-flow-layouts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Sintel: two scenes of three frames.
        for scene in ["alley", "bamboo"] {
            for i in 1..=3 {
                touch_png(&root.join(format!("sintel/training/clean/{scene}/frame_000{i}.png")), 16, 8);
            }
        }
        let s = sintel(&root.join("sintel"), "training", "clean").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[1].name, "alley/frame_0002");
        assert!(s[1].flow.as_ref().unwrap().ends_with("training/flow/alley/frame_0002.flo"));
        // KITTI.
        for id in ["000000", "000001"] {
            for t in ["10", "11"] {
                touch_png(&root.join(format!("kitti/training/image_2/{id}_{t}.png")), 16, 8);
            }
        }
        let k = kitti(&root.join("kitti"), "training").unwrap();
        assert_eq!(k.len(), 2);
        assert!(k[0].sparse && k[0].flow.as_ref().unwrap().ends_with("flow_occ/000000_10.png"));
        // FlyingChairs with a split file.
        for i in 1..=3 {
            touch_png(&root.join(format!("chairs/data/0000{i}_img1.ppm")), 16, 8);
            touch_png(&root.join(format!("chairs/data/0000{i}_img2.ppm")), 16, 8);
            touch_flo(&root.join(format!("chairs/data/0000{i}_flow.flo")), 16, 8);
        }
        std::fs::write(root.join("chairs/chairs_split.txt"), "1\n2\n1\n").unwrap();
        let c = flying_chairs(&root.join("chairs"), Split::Training).unwrap();
        assert_eq!(c.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["00001_flow", "00003_flow"]);
        assert!(c[1].img2.ends_with("00003_img2.ppm"));
        assert_eq!(flying_chairs(&root.join("chairs"), Split::Validation).unwrap().len(), 1);
        std::fs::write(root.join("chairs/chairs_split.txt"), "1\n3\n1\n").unwrap();
        assert!(flying_chairs(&root.join("chairs"), Split::Training).unwrap_err().to_string().contains("line 2"));
        // Folder: Sintel-like passes with a shared gt/, and a Middlebury-like pair.
        touch_png(&root.join("eval/scene/clean/frame_0002.png"), 16, 8);
        touch_png(&root.join("eval/scene/clean/frame_0003.png"), 16, 8);
        touch_png(&root.join("eval/scene/final/frame_0002.png"), 16, 8);
        touch_png(&root.join("eval/scene/final/frame_0003.png"), 16, 8);
        touch_flo(&root.join("eval/scene/gt/frame_0002.flo"), 16, 8);
        touch_png(&root.join("eval/scene/gt/invalid/frame_0002.png"), 16, 8);
        touch_png(&root.join("eval/venus/frame1.png"), 16, 8);
        touch_png(&root.join("eval/venus/frame2.png"), 16, 8);
        touch_flo(&root.join("eval/venus/example.flo"), 16, 8);
        let f = folder(&root.join("eval")).unwrap();
        assert_eq!(f.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["scene/clean", "scene/final", "venus"]);
        assert!(f[1].flow.as_ref().unwrap().ends_with("scene/gt/frame_0002.flo"));
        assert!(f[0].invalid.is_some() && f[2].invalid.is_none());
        let pair = load_pair(&f[0]).unwrap();
        assert_eq!((pair.img1.height, pair.img1.width), (8, 16));
        // The invalid mask (non-zero almost everywhere) is kept apart from the ground truth.
        assert!(pair.flow.unwrap().valid.is_none());
        assert!(pair.excluded.unwrap().iter().sum::<f32>() > 100.0);
        // Missing folders and mismatched sizes name the file.
        assert!(sintel(&root.join("nope"), "training", "clean").unwrap_err().to_string().contains("nope"));
        touch_flo(&root.join("eval/venus/example.flo"), 15, 8);
        let err = load_pair(&folder(&root.join("eval")).unwrap()[2]).unwrap_err().to_string();
        assert!(err.contains("example.flo") && err.contains("differs"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
