//! The one place where the compute backend is chosen.
//!
//! burn 0.22 picks the backend at run time from the device. lora's default is burn's `flex` CPU backend,
//! measured fastest on CPU for this workload (forward+backward of a small Llama: ~1,870 tokens/s on flex
//! against ~1,430 on ndarray, which also lacks bf16/f16). `ndarray` is compiled only with the cargo
//! feature of that name, for benchmarks; `cuda` only with the `cuda` feature; `wgpu` (Vulkan, Metal,
//! DX12: AMD, Intel and Apple GPUs) only with the `wgpu` feature.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{CoreError, Result};

/// A compute backend lora can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn-flex on the CPU (the default).
    #[default]
    Cpu,
    /// burn-ndarray on the CPU (feature `ndarray`).
    NdArray,
    /// burn-cuda on an NVIDIA GPU (feature `cuda`).
    Cuda,
    /// burn-wgpu on any Vulkan / Metal / DX12 adapter (feature `wgpu`).
    Wgpu,
}

impl FromStr for Backend {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "ndarray" => Ok(Self::NdArray),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "wgpu" => Ok(Self::Wgpu),
            other => Err(CoreError::Invalid(format!("unknown device '{other}'; expected cpu, ndarray, cuda or wgpu"))),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu (burn-flex)",
            Self::NdArray => "ndarray (burn-ndarray)",
            Self::Cuda => "cuda (burn-cuda)",
            Self::Wgpu => "wgpu (burn-wgpu)",
        })
    }
}

impl Backend {
    /// Whether this is one of the CPU backends (flex, ndarray).
    pub fn is_cpu(self) -> bool {
        matches!(self, Self::Cpu | Self::NdArray)
    }

    /// The device for this backend, or an error saying which cargo feature it needs.
    pub fn device(self) -> Result<Device> {
        self.device_at(0)
    }

    /// [`Self::device`], on GPU `gpu` of this machine for `cuda` (a data-parallel rank's local
    /// rank); the CPU backends and wgpu's default adapter ignore it.
    pub fn device_at(self, gpu: usize) -> Result<Device> {
        #[cfg(not(feature = "cuda"))]
        let _ = gpu;
        match self {
            Self::Cpu => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            Self::NdArray => Ok(Device::ndarray()),
            #[cfg(not(feature = "ndarray"))]
            Self::NdArray => Err(CoreError::Invalid(
                "this lora was built without the 'ndarray' feature (cargo build --features ndarray)".into(),
            )),
            #[cfg(feature = "cuda")]
            Self::Cuda => {
                // burn-cuda loads the driver on first use and panics when it is missing; look first so
                // that a machine without an NVIDIA driver gets an error, not a crash.
                if !cuda_driver_present() {
                    return Err(CoreError::Invalid(
                        "no NVIDIA driver found (libcuda.so.1 is not in LD_LIBRARY_PATH or the system library \
                         folders); install the driver or use --device cpu"
                            .into(),
                    ));
                }
                Ok(Device::cuda(gpu))
            }
            #[cfg(not(feature = "cuda"))]
            Self::Cuda => Err(CoreError::Invalid(
                "this lora was built without CUDA support; rebuild with `cargo build --release --features cuda`".into(),
            )),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => wgpu_device(),
            #[cfg(not(feature = "wgpu"))]
            Self::Wgpu => Err(CoreError::Invalid(
                "this lora was built without wgpu support; rebuild with `cargo build --release --features wgpu`".into(),
            )),
        }
    }
}

/// The wgpu device, acquired once per process.
///
/// burn's lazy `Device::wgpu` panics on the first tensor when no adapter exists (no Vulkan driver,
/// no GPU); `init` reports it instead, and may run only once, so its outcome is kept.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    static DEVICE: std::sync::OnceLock<std::result::Result<Device, String>> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            Device::wgpu_options().init().map_err(|e| {
                format!(
                    "no usable wgpu adapter ({e}); install a Vulkan driver (on Debian/Ubuntu `mesa-vulkan-drivers` \
                     also gives a CPU one, lavapipe) or use --device cpu"
                )
            })
        })
        .clone()
        .map_err(CoreError::Invalid)
}

/// Whether the CUDA driver library is where the dynamic loader will look for it.
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> bool {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(Into::into)
        .collect();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/nvidia/lib64",
        "/usr/lib/wsl/lib",
        "/usr/local/cuda/compat",
    ] {
        dirs.push(d.into());
    }
    dirs.iter().any(|d| d.join("libcuda.so.1").exists() || d.join("libcuda.so").exists())
}

/// Whether `device` is one of the CPU backends (flex, ndarray).
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "ndarray")]
    if device.clone().inner() == Device::ndarray() {
        return true;
    }
    device.clone().inner() == Device::flex()
}

/// The default device: the CPU through burn-flex.
pub fn default_device() -> Device {
    Device::flex()
}
