//! Choosing the device training runs on, at run time.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use mlops_core::{Error, Result};

/// Where to train: parsed from `cpu`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N` (e.g. from
/// an `MLOPS_DEVICE` environment variable), then opened with [`TrainDevice::open`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum TrainDevice {
    /// burn's pure-Rust `flex` CPU backend; always available.
    #[default]
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12): the `wgpu` cargo feature.
    Wgpu {
        /// Which adapter, in burn's enumeration order.
        index: usize,
    },
    /// An NVIDIA GPU through CUDA: the `cuda` cargo feature.
    Cuda {
        /// Which GPU.
        index: usize,
    },
}

impl fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Wgpu { index } => write!(f, "wgpu:{index}"),
            Self::Cuda { index } => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for TrainDevice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| {
            Error::invalid_input(
                format!("training device {s:?}"),
                format!("{reason}; expected cpu, wgpu, wgpu:N, cuda or cuda:N"),
            )
        };
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>()
                    .map_err(|_| bad("the index is not a number"))?,
            ),
            None => (s, 0),
        };
        match kind.to_ascii_lowercase().as_str() {
            "cpu" | "flex" if index == 0 => Ok(Self::Cpu),
            "cpu" | "flex" => Err(bad("the CPU device takes no index")),
            "wgpu" => Ok(Self::Wgpu { index }),
            "cuda" => Ok(Self::Cuda { index }),
            _ => Err(bad("unknown device kind")),
        }
    }
}

impl TryFrom<String> for TrainDevice {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<TrainDevice> for String {
    fn from(d: TrainDevice) -> String {
        d.to_string()
    }
}

impl TrainDevice {
    /// Opens the device; the returned device has autodiff enabled, ready to train.
    ///
    /// A GPU device whose backend was not compiled in, or that this machine does not
    /// have, gives [`Error::Unavailable`] saying which and why, never a panic.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::flex().autodiff()),
            Self::Wgpu { index } => open_wgpu(index),
            Self::Cuda { index } => open_cuda(index),
        }
    }
}

fn unavailable(device: TrainDevice, reason: String) -> Error {
    Error::Unavailable {
        what: format!("training device {device}"),
        reason,
    }
}

/// The `index`-th device burn enumerates for `device_type`, with autodiff.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn open_enumerated(
    choice: TrainDevice,
    device_type: burn::tensor::DeviceType,
    index: usize,
) -> Result<Device> {
    let found = std::panic::catch_unwind(|| Device::enumerate(device_type).into_vec())
        .map_err(|_| unavailable(choice, "the backend failed to list its devices".into()))?;
    let count = found.len();
    found
        .into_iter()
        .nth(index)
        .map(Device::autodiff)
        .ok_or_else(|| unavailable(choice, format!("this machine has {count} such device(s)")))
}

#[cfg(feature = "wgpu")]
fn open_wgpu(index: usize) -> Result<Device> {
    open_enumerated(
        TrainDevice::Wgpu { index },
        burn::tensor::DeviceType::Wgpu,
        index,
    )
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu(index: usize) -> Result<Device> {
    Err(unavailable(
        TrainDevice::Wgpu { index },
        "this build has no wgpu backend; enable the `wgpu` cargo feature of mlops-train (or mlops)"
            .into(),
    ))
}

#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> Result<Device> {
    open_enumerated(
        TrainDevice::Cuda { index },
        burn::tensor::DeviceType::Cuda,
        index,
    )
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(index: usize) -> Result<Device> {
    Err(unavailable(
        TrainDevice::Cuda { index },
        "this build has no CUDA backend; enable the `cuda` cargo feature of mlops-train (or mlops)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<TrainDevice>().unwrap(), TrainDevice::Cpu);
        assert_eq!("flex".parse::<TrainDevice>().unwrap(), TrainDevice::Cpu);
        assert_eq!(
            "CUDA:1".parse::<TrainDevice>().unwrap(),
            TrainDevice::Cuda { index: 1 }
        );
        assert_eq!(
            "wgpu".parse::<TrainDevice>().unwrap(),
            TrainDevice::Wgpu { index: 0 }
        );
        assert_eq!(TrainDevice::Cuda { index: 2 }.to_string(), "cuda:2");
        for bad in ["", "tpu", "cuda:x", "cpu:1", "wgpu:-1"] {
            let err = bad.parse::<TrainDevice>().unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("training device {bad:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn cpu_device_computes_gradients() {
        let device = TrainDevice::Cpu.open().unwrap();
        let x = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [3]), &device)
            .require_grad();
        let y = (x.clone() * x.clone()).sum();
        let grads = y.backward();
        let g = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(g, vec![2.0, 4.0, 6.0]);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpu_without_its_feature_is_a_clear_error() {
        let err = TrainDevice::Cuda { index: 0 }.open().unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }));
        assert!(err.to_string().contains("`cuda` cargo feature"), "{err}");
    }
}
