//! Evaluating a model on a held-out split: accuracy of both stages, the EMA weights, the
//! early-exit curve and coefficient statistics ([`evaluate`]), on the loader every
//! command evaluates with ([`crate::loaders::eval_loader`]).

use crate::data::Loader;
use crate::error::TrainError;
use crate::metrics::{Accuracy, CoefficientAccumulator, CoefficientStats};
use crate::model::Model;
use basis_models::early_exit::{self, ExitOutcomes, ExitPoint};
use serde::{Deserialize, Serialize};

/// An evaluation of a model on a test set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Evaluation {
    /// Images evaluated.
    pub images: usize,
    /// Lightweight model top-1 (BasisNet only).
    pub light_top1: Option<f64>,
    /// Lightweight model top-5.
    pub light_top5: Option<f64>,
    /// Specialist (or static network) top-1.
    pub specialist_top1: f64,
    /// Specialist top-5.
    pub specialist_top5: f64,
    /// The EMA weights' specialist top-1, when EMA is on.
    pub ema_specialist_top1: Option<f64>,
    /// Early-exit curve (BasisNet only).
    pub early_exit: Vec<ExitPoint>,
    /// Multiply-adds of the lightweight stage per image.
    pub light_madds: i64,
    /// Multiply-adds of an image through both stages.
    pub full_madds: i64,
    /// What the coefficients look like on the test set (BasisNet only).
    #[serde(default)]
    pub coefficients: Option<CoefficientStats>,
    /// Test samples that could not be read and were left out of `images` (at most
    /// `data.max_bad_fraction` of them, or the evaluation fails).
    #[serde(default)]
    pub bad_samples: usize,
    /// The first of them, each `sample: problem`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_examples: Vec<String>,
}

impl Evaluation {
    /// The operating point of early exit: the cheapest point of the curve whose top-1 is
    /// within `max_drop` (a fraction: 0.005 is half a point) of the specialist's.
    ///
    /// ```
    /// use basis_train::{Evaluation, ExitPoint};
    /// let point = |threshold, top1, avg_madds| ExitPoint { threshold, exit_rate: 0.0, top1, avg_madds };
    /// let e = Evaluation {
    ///     specialist_top1: 0.9,
    ///     early_exit: vec![point(0.5, 0.85, 10.0), point(0.8, 0.897, 20.0), point(1.01, 0.9, 30.0)],
    ///     ..Default::default()
    /// };
    /// assert_eq!(e.operating_point(0.005).unwrap().threshold, 0.8);
    /// assert_eq!(e.operating_point(0.0).unwrap().threshold, 1.01);
    /// ```
    pub fn operating_point(&self, max_drop: f64) -> Option<&ExitPoint> {
        self.early_exit
            .iter()
            .filter(|p| p.top1 >= self.specialist_top1 - max_drop)
            .min_by(|a, b| a.avg_madds.total_cmp(&b.avg_madds))
    }
}

/// Evaluate `model` (and `ema`, its moving average) on `loader`, with the early-exit curve
/// over `thresholds`; `resolution` is the static network's input size. Batches go to the
/// model's device; the counts come back to the host once a batch.
pub fn evaluate(
    model: &Model,
    ema: Option<&Model>,
    loader: &Loader,
    thresholds: &[f64],
    resolution: i64,
) -> Result<Evaluation, TrainError> {
    let _guard = tch::no_grad_guard();
    // The weights stay as they are for the whole pass: static layers keep their folded,
    // prepacked kernels between batches.
    let _frozen = basis_core::frozen::freeze();
    let (mut light, mut special, mut averaged) = (
        Accuracy::default(),
        Accuracy::default(),
        Accuracy::default(),
    );
    let mut outcomes = ExitOutcomes::default();
    let mut coefficient_stats = CoefficientAccumulator::default();
    let device = model.device();
    let mut epoch = loader.epoch(0);
    for batch in epoch.by_ref() {
        let batch = batch?.to_tensors(device)?;
        let out = model.forward_t(&batch, false)?;
        if let Some(alpha) = out.coefficients.first() {
            coefficient_stats.add(alpha, &batch.labels)?;
        }
        outcomes
            .specialist_correct
            .extend(special.add(&out.specialist_logits, &batch.labels)?);
        if let Some(logits) = &out.light_logits {
            outcomes
                .light_correct
                .extend(light.add(logits, &batch.labels)?);
            let confidence = early_exit::confidence(logits)?;
            outcomes
                .confidence
                .extend(Vec::<f32>::try_from(&confidence)?);
        }
        if let Some(ema) = ema {
            let out = ema.forward_t(&batch, false)?;
            averaged.add(&out.specialist_logits, &batch.labels)?;
        }
    }
    let report = epoch.report();
    drop(epoch);
    let cost = model.cost(resolution)?;
    let is_basisnet = model.is_basisnet();
    let early_exit = if is_basisnet {
        thresholds
            .iter()
            .map(|&t| outcomes.point(t, cost.light_madds, cost.full_madds))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Evaluation {
        coefficients: coefficient_stats.finish(),
        images: special.images(),
        light_top1: is_basisnet.then(|| light.top1()),
        light_top5: is_basisnet.then(|| light.top5()),
        specialist_top1: special.top1(),
        specialist_top5: special.top5(),
        ema_specialist_top1: ema.map(|_| averaged.top1()),
        early_exit,
        light_madds: cost.light_madds,
        full_madds: cost.full_madds,
        bad_samples: report.skipped,
        bad_examples: report.first_bad,
    })
}
