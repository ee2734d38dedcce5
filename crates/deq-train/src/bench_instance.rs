//! Problem instances shared between a benchmark binary and its PyTorch twin: the binary writes
//! the model's initial weights (`model.<name>`) and the data it will train on to one
//! safetensors file, and both sides read it, so that a comparison measures two implementations
//! on the identical problem (`scripts/bench_io.py` reads the file on the Python side).

use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// Writes the initial weights `vars` (as `model.<name>`) and the `data` tensors to `path`.
pub fn save(path: &Path, vars: &[(String, Var)], data: Vec<(&str, Tensor)>) -> Result<()> {
    let mut t: HashMap<String, Tensor> = vars.iter().map(|(k, v)| (format!("model.{k}"), v.as_tensor().clone())).collect();
    t.extend(data.into_iter().map(|(k, v)| (k.to_string(), v)));
    candle_core::safetensors::save(&t, path).map_err(|e| TrainError::format(path, e.to_string()))
}

/// Reads an instance written by [`save`], checks that `vars` (this build's initial weights)
/// equal the file's exactly, and returns the file's other tensors by name.
pub fn load(path: &Path, vars: &[(String, Var)]) -> Result<HashMap<String, Tensor>> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| TrainError::format(path, e.to_string()))?;
    for (name, v) in vars {
        let want = t.remove(&format!("model.{name}")).ok_or_else(|| TrainError::format(path, format!("no `model.{name}`")))?;
        let same = v.as_tensor().shape() == want.shape() && v.as_tensor().to_dtype(candle_core::DType::F64)?.sub(&want.to_dtype(candle_core::DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()? == 0.0;
        if !same {
            return Err(TrainError::format(path, format!("the initial `{name}` differs from this build's: write the instance again")));
        }
    }
    Ok(t)
}

/// Takes tensor `name` out of `t` (read from `path`), or names what is missing.
pub fn take(t: &mut HashMap<String, Tensor>, name: &str, path: &Path) -> Result<Tensor> {
    t.remove(name).ok_or_else(|| TrainError::format(path, format!("no `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn round_trip_and_a_changed_weight_is_refused() {
        let dir = std::env::temp_dir().join(format!("deq-train-instance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("i.safetensors");
        let w = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let vars = vec![("w".to_string(), w.clone())];
        save(&path, &vars, vec![("x", Tensor::new(&[5u32, 6], &Device::Cpu).unwrap())]).unwrap();
        let mut t = load(&path, &vars).unwrap();
        assert_eq!(take(&mut t, "x", &path).unwrap().to_vec1::<u32>().unwrap(), vec![5, 6]);
        assert!(take(&mut t, "x", &path).unwrap_err().to_string().contains("no `x`"));
        let other = vec![("w".to_string(), Var::new(&[[1f32, 2.0], [3.0, 4.5]], &Device::Cpu).unwrap())];
        let e = load(&path, &other).unwrap_err().to_string();
        assert!(e.contains("i.safetensors") && e.contains("`w` differs"), "{e}");
        let missing = vec![("v".to_string(), Var::zeros(2, DType::F32, &Device::Cpu).unwrap())];
        assert!(load(&path, &missing).unwrap_err().to_string().contains("no `model.v`"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
