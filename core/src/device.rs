//! The pipeline's `device:` field and how it resolves to a tch device.

use std::fmt;
use std::str::FromStr;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "`{other}` is not a device (expected auto, cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A device that exists on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// The class that goes into cache keys: results computed on a GPU are not reused on a
    /// CPU (their floating-point results differ), but GPU 0 and GPU 1 share a cache.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda(_) => "cuda",
        }
    }

    pub fn tch(&self) -> tch::Device {
        match self {
            Self::Cpu => tch::Device::Cpu,
            Self::Cuda(n) => tch::Device::Cuda(*n),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Resolves against the CUDA devices libtorch sees; a named GPU that is absent is an
    /// error rather than a silent fall-back to the CPU.
    pub fn resolve(&self) -> Result<Device, String> {
        let gpus = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        match *self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto if gpus > 0 => Ok(Device::Cuda(0)),
            Self::Auto => Ok(Device::Cpu),
            Self::Cuda(n) if n < gpus => Ok(Device::Cuda(n)),
            Self::Cuda(n) => Err(format!(
                "device cuda:{n} does not exist: libtorch sees {gpus} CUDA device(s){}",
                if gpus == 0 {
                    "; use `device: cpu` or `auto`"
                } else {
                    ""
                }
            )),
        }
    }
}

/// The libtorch version this binary was built against (read by build.rs).
pub fn libtorch_version() -> &'static str {
    env!("PICIE_LIBTORCH_VERSION")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<DeviceSpec>(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn absent_gpu_is_an_error() {
        if tch::Cuda::is_available() {
            return picie_testkit::skip("gpu: present, so a missing cuda:0 cannot be tested");
        }
        let err = DeviceSpec::Cuda(0).resolve().unwrap_err();
        assert!(err.contains("cuda:0 does not exist"), "{err}");
        assert_eq!(DeviceSpec::Auto.resolve(), Ok(Device::Cpu));
    }
}
