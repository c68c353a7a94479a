//! The `knn` stage: its table equals the cosine top-k of the stored tokens' mean tokens (f16
//! and f32 storage), image ids as stored, rank 0 itself; bad `k` is refused, at plan time
//! (0, at its place) or when the image count is known (k >= N); and it reads the tokens of a
//! real `backbone` stage without a forward pass of its own.

use picie_core::augment_params::Geometric;
use picie_engine::testing::{ran, Fixture};
use picie_engine::{Context, Port, Registry, Stage, StageError};
use picie_stages::io::knn_table::KnnTable;
use picie_stages::io::tables::Precision;
use picie_stages::io::tokens::{self, Tokens, EVAL_VIEW};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

const C: i64 = 6;
const H: i64 = 2;
const W: i64 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SrcParams {
    images: u32,
    f16: bool,
}
impl Default for SrcParams {
    fn default() -> Self {
        Self {
            images: 7,
            f16: false,
        }
    }
}

/// Image ids written out of order (ids 3 * i + 1, in reverse, in two batches).
fn ids(n: u32) -> Vec<u32> {
    (0..n).rev().map(|i| 3 * i + 1).collect()
}

/// Tokens of image id: a smooth function of the id, so nearby ids are similar.
fn tokens_of(id: u32) -> Tensor {
    let v: Vec<f32> = (0..C * H * W)
        .map(|j| ((id as f32) * 0.15 + j as f32 * 0.7).sin() + 0.2 * (j / (H * W)) as f32)
        .collect();
    Tensor::from_slice(&v).view([C, H, W])
}

/// A source of evaluation-crop tokens with chosen contents.
struct Src(SrcParams);
impl Stage for Src {
    type Params = SrcParams;
    const KIND: &'static str = "tokens_src";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test source of eval tokens";
    fn inputs(_: &SrcParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &SrcParams) -> Vec<Port> {
        vec![Port::artifact("tokens", "eval_tokens")]
    }
    fn new(p: SrcParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let precision = if self.0.f16 {
            Precision::F16
        } else {
            Precision::F32
        };
        let all = ids(self.0.images);
        let w = ctx.output("tokens")?;
        tokens::begin(w, [C, H, W], precision, "digest-1");
        let g = Geometric {
            crop_frac: 1.0,
            u_x: 0.0,
            u_y: 0.0,
            flip: false,
        };
        for chunk in all.chunks(4) {
            let t = Tensor::stack(&chunk.iter().map(|&i| tokens_of(i)).collect::<Vec<_>>(), 0);
            w.write(&tokens::rows(
                chunk,
                EVAL_VIEW,
                &vec![g; chunk.len()],
                &t,
                precision,
            )?)?;
        }
        Ok(())
    }
}

fn fixture() -> Fixture {
    let mut r: Registry = picie_stages::builtin();
    r.register::<Src>();
    Fixture::new(r)
}

fn pipeline(k: &str, f16: bool) -> String {
    format!(
        "name: t
seed: 1
device: cpu
store: store
stages:
  - name: src
    kind: tokens_src
    params: {{images: 7, f16: {f16}}}
  - name: knn
    kind: knn
    params: {{k: {k}}}
    inputs: {{tokens: src.tokens}}
"
    )
}

/// The expected table, in f64 from the tokens as stored (f16-rounded when stored so).
fn expected(k: usize, f16: bool) -> Vec<(u32, Vec<u32>, Vec<f64>)> {
    let mut sorted = ids(7);
    sorted.sort();
    let emb: Vec<Tensor> = sorted
        .iter()
        .map(|&i| {
            let t = tokens_of(i);
            let t = if f16 { t.to_kind(Kind::Half) } else { t };
            let m = t
                .to_kind(Kind::Double)
                .mean_dim([1i64, 2].as_slice(), false, Kind::Double);
            &m / m.norm()
        })
        .collect();
    let mut out = Vec::new();
    for (a, &id) in sorted.iter().enumerate() {
        let mut others: Vec<(f64, usize)> = (0..sorted.len())
            .filter(|&b| b != a)
            .map(|b| (emb[a].dot(&emb[b]).double_value(&[]), b))
            .collect();
        others.sort_by(|x, y| y.0.total_cmp(&x.0));
        let mut nb = vec![id];
        let mut sims = vec![1.0];
        for &(s, b) in &others[..k - 1] {
            nb.push(sorted[b]);
            sims.push(s);
        }
        out.push((id, nb, sims));
    }
    out
}

#[test]
fn knn_table_is_the_cosine_top_k_of_mean_tokens() {
    for f16 in [false, true] {
        let f = fixture();
        let (plan, _) = f.run(&pipeline("4", f16)).unwrap();
        let a = f.artifact(&plan, "knn", "knn");
        assert!(
            a.table_files()
                .all(|(p, _)| p.extension().is_some_and(|e| e == "parquet")),
            "the knn table is Parquet"
        );
        let table = KnnTable::read(&a).unwrap();
        assert_eq!(table.k, 4);
        assert_eq!(table.backbone, "digest-1");
        assert_eq!(a.meta("images").and_then(|v| v.as_u64()), Some(7));
        let want = expected(4, f16);
        let got: Vec<(u32, Vec<u32>)> = table.rows.clone();
        assert_eq!(
            got,
            want.iter().map(|w| (w.0, w.1.clone())).collect::<Vec<_>>(),
            "f16 {f16}"
        );
        // Similarities as stored.
        let mut sims = Vec::new();
        for b in a.batches() {
            let b = b.unwrap();
            let s = b
                .column_by_name("similarity")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Float32Array>()
                .unwrap();
            sims.extend(s.values().iter().map(|&x| x as f64));
        }
        let flat: Vec<f64> = want.iter().flat_map(|w| w.2.clone()).collect();
        assert_eq!(sims.len(), flat.len());
        for (g, w) in sims.iter().zip(&flat) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}

#[test]
fn k_of_at_least_the_image_count_is_refused_naming_both() {
    let f = fixture();
    let err = f.run(&pipeline("7", false)).unwrap_err().to_string();
    assert!(
        err.contains("`k: 7`") && err.contains("7 image(s)"),
        "{err}"
    );
    assert!(f.run(&pipeline("6", false)).is_ok());
}

#[test]
fn k_of_0_is_refused_at_plan_time_at_its_place() {
    let f = fixture();
    let msg = match f.plan(&pipeline("0", false)) {
        Err(picie_engine::Error::Invalid(d)) => d.to_string(),
        other => panic!("expected plan errors, got {:?}", other.map(|_| ())),
    };
    // `k` is on line 11 of the file, its value at column 15.
    assert!(msg.contains("must be at least 1"), "{msg}");
    assert!(msg.contains(":11:"), "no line of `k` in: {msg}");
}

/// On a real frozen ViT's stored tokens (random DINOv2-S weights, synthetic scenes): the
/// table is that of the tokens as `evaluate` reads them, and changing `k` reruns only knn.
#[test]
fn knn_reads_a_backbone_stages_tokens() {
    let f = fixture();
    let yaml = |k: u32| {
        format!(
            "name: t
seed: 1
device: cpu
store: store
dataset: {{kind: synthetic, train_images: 6, val_images: 2, width: 56, height: 56, classes: 3}}
stages:
  - name: tokens
    kind: backbone
    params: {{feature_block: 1, split: train, res: 28, precision: f32}}
  - name: knn
    kind: knn
    params: {{k: {k}}}
    inputs: {{tokens: tokens.tokens}}
"
        )
    };
    let (plan, _) = f.run(&yaml(3)).unwrap();
    let table = KnnTable::read(&f.artifact(&plan, "knn", "knn")).unwrap();
    let tok = Tokens::open(&f.artifact(&plan, "tokens", "tokens")).unwrap();
    assert_eq!(table.backbone, tok.backbone);
    let mut all = Vec::new();
    for b in tok.eval_batches() {
        all.push(b.unwrap().1);
    }
    let t = Tensor::cat(&all, 0).to_kind(Kind::Double);
    let m = t.mean_dim([2i64, 3].as_slice(), false, Kind::Double);
    let m = &m / m.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let sims = m.matmul(&m.tr());
    assert_eq!(table.rows.len(), 6);
    for (img, nb) in &table.rows {
        assert_eq!(nb[0], *img);
        let s = Vec::<f64>::try_from(sims.get(*img as i64)).unwrap();
        let mut order: Vec<u32> = (0..6).filter(|j| j != img).collect();
        order.sort_by(|&a, &b| s[b as usize].total_cmp(&s[a as usize]));
        // The same neighbours, up to f32 rounding among near-equal similarities.
        for r in 1..3 {
            let (got, want) = (s[nb[r] as usize], s[order[r - 1] as usize]);
            assert!(
                (got - want).abs() < 1e-6,
                "image {img} rank {r}: {s:?} {nb:?}"
            );
        }
    }
    let (_, again) = f.run(&yaml(4)).unwrap();
    assert_eq!(ran(&again), ["knn"]);
}
