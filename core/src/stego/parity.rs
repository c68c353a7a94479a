//! Parity with the release: on fixed features, head weights, coordinates and negative
//! permutations (written here), tests/python/stego_parity.py computes STEGO's
//! `ContrastiveCorrelationLoss` as released and the head's gradients in PyTorch.
//! Tolerances: f64, 1e-10 on each term and 1e-9 relative to the largest gradient entry;
//! f32, 1e-6 on each term and 1e-5 relative (measured: 0 and 1e-7; einsum and our
//! products may sum in other orders).

use rand::SeedableRng;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::{correspondence_loss, CorrLossConfig, Samples, StegoHead, StegoHeadConfig};

const HEAD_VARS: [&str; 6] = [
    "linear.weight",
    "linear.bias",
    "hidden.weight",
    "hidden.bias",
    "out.weight",
    "out.bias",
];

fn config_json(c: &CorrLossConfig) -> String {
    serde_json::json!({
        "pointwise": c.pointwise,
        "zero_clamp": c.zero_clamp,
        "stabalize": c.stabalize,
        "pos_intra_weight": c.pos_intra_weight,
        "pos_inter_weight": c.pos_inter_weight,
        "neg_inter_weight": c.neg_inter_weight,
        "pos_intra_shift": c.pos_intra_shift,
        "pos_inter_shift": c.pos_inter_shift,
        "neg_inter_shift": c.neg_inter_shift,
    })
    .to_string()
}

/// Runs one case on both sides and checks the terms and gradients; false when the oracle
/// is absent (the skip is recorded by `run_oracle`).
fn agree(test: &str, kind: Kind, cfg: CorrLossConfig, term_tol: f64, grad_rel: f64) -> bool {
    let (b, c, d) = (4, 24, 7);
    tch::manual_seed(11);
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(kind);
    let head = StegoHead::new(
        &vs.root(),
        &StegoHeadConfig {
            in_channels: c,
            dim: d,
            ..Default::default()
        },
    )
    .unwrap();
    // Token-like features: a shared direction plus noise, so that correlations spread on
    // both sides of the shifts and the clamp is active for some pairs and not others.
    let base = Tensor::randn([1, c, 1, 1], (kind, Device::Cpu));
    let feats = &base + Tensor::randn([b, c, 6, 7], (kind, Device::Cpu)) * 1.5;
    let feats_pos = &base + Tensor::randn([b, c, 5, 6], (kind, Device::Cpu)) * 1.5;
    let samples = Samples::draw(
        b as usize,
        &cfg,
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
    );

    let (f, code) = head
        .forward_t::<rand_chacha::ChaCha8Rng>(&feats, None)
        .unwrap();
    let (fp, code_pos) = head
        .forward_t::<rand_chacha::ChaCha8Rng>(&feats_pos, None)
        .unwrap();
    let terms = correspondence_loss(&cfg, &f, &fp, &code, &code_pos, &samples).unwrap();
    terms.total.backward();

    let dir = tempfile::tempdir().unwrap();
    let (case, out) = (
        dir.path().join("case.safetensors"),
        dir.path().join("ref.safetensors"),
    );
    let vars = vs.variables();
    let perms: Vec<i64> = samples.perms.iter().flatten().copied().collect();
    let mut named: Vec<(String, Tensor)> = vec![
        ("feats".into(), feats.shallow_clone()),
        ("feats_pos".into(), feats_pos.shallow_clone()),
        ("coords1".into(), samples.coords1.shallow_clone()),
        ("coords2".into(), samples.coords2.shallow_clone()),
        (
            "perms".into(),
            Tensor::from_slice(&perms).view([samples.perms.len() as i64, b]),
        ),
    ];
    for n in HEAD_VARS {
        named.push((n.into(), vars[n].detach().contiguous()));
    }
    Tensor::write_safetensors(&named, &case).unwrap();
    let Some(_) = crate::run_oracle(
        test,
        "stego_parity.py",
        [
            case.display().to_string(),
            out.display().to_string(),
            config_json(&cfg),
        ],
    ) else {
        return false;
    };
    let want = crate::read_tensors(&out);
    for (name, got) in [
        ("intra", &terms.intra),
        ("inter", &terms.inter),
        ("neg", &terms.neg),
        ("total", &terms.total),
    ] {
        let diff = crate::max_abs_diff(&got.detach(), &want[name]);
        eprintln!(
            "{test}: {name} {:.6} (PyTorch {:.6}), off by {diff:e}",
            got.double_value(&[]),
            want[name].double_value(&[])
        );
        assert!(diff <= term_tol, "{test}: {name} off by {diff}");
    }
    for n in HEAD_VARS {
        let (got, want) = (vars[n].grad(), &want[&format!("grad.{n}")]);
        let scale = want.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{test}: the oracle's gradient of {n} is zero");
        let rel = crate::max_abs_diff(&got, want) / scale;
        eprintln!("{test}: grad {n} off by {rel:e} of its largest entry {scale:e}");
        assert!(
            rel <= grad_rel,
            "{test}: gradient of {n} off by {rel} (relative)"
        );
    }
    true
}

#[test]
fn released_defaults_match_pytorch_in_f64_and_f32() {
    let cfg = CorrLossConfig::default();
    if agree("stego default f64", Kind::Double, cfg, 1e-10, 1e-9) {
        agree("stego default f32", Kind::Float, cfg, 1e-6, 1e-5);
    }
}

#[test]
fn every_branch_matches_pytorch() {
    let cfg = CorrLossConfig {
        pointwise: false,
        zero_clamp: false,
        stabalize: true,
        feature_samples: 5,
        neg_samples: 2,
        pos_intra_shift: 0.05,
        pos_inter_shift: -0.1,
        neg_inter_shift: 0.3,
        ..Default::default()
    };
    agree("stego branches f64", Kind::Double, cfg, 1e-10, 1e-9);
    let clamp_only = CorrLossConfig {
        pointwise: true,
        zero_clamp: true,
        stabalize: true,
        feature_samples: 3,
        neg_samples: 1,
        ..Default::default()
    };
    agree("stego clamps f64", Kind::Double, clamp_only, 1e-10, 1e-9);
}
