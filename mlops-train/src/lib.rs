//! # mlops-train
//!
//! Training for the mlops SDK on [burn](https://burn.dev): burn's pure-Rust `flex`
//! CPU backend by default, GPUs through the `wgpu` and `cuda` cargo features.
//!
//! Today this crate chooses the device training runs on ([`TrainDevice`]); the
//! [`Trainer`](mlops_core::Trainer), [`Predictor`](mlops_core::Predictor) and
//! [`ModelLoader`](mlops_core::ModelLoader) implementations (tabular data
//! preparation, linear and MLP models, evaluation, artifacts) are planned: see the
//! README's feature table.
//!
//! ```
//! use mlops_train::TrainDevice;
//!
//! let choice: TrainDevice = "cpu".parse()?;
//! let device = choice.open()?;               // burn's flex CPU device
//! # let _ = device;
//! assert!("tpu".parse::<TrainDevice>().is_err());
//! # Ok::<(), mlops_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod device;

pub use device::TrainDevice;

/// The burn device type, re-exported so callers need no direct burn dependency.
pub use burn::tensor::Device;
