//! The joint two-stage loss of the paper, `CE(specialist) + lambda * CE(light)`, with its
//! parts: soft (label-smoothed or mixed) targets and knowledge distillation.

use crate::data::Batch;
use crate::error::TrainError;
use crate::model::Model;
use crate::recipe::LossSection;
use crate::schedule::Phase;
use crate::teacher::Teacher;
use tch::{Kind, Tensor};

/// The joint loss of one training batch: cross-entropy of the specialist against the
/// (label-smoothed or mixed) targets, plus `loss.light_weight` times the same for the
/// lightweight model, each term plus `loss.distill_weight` times the distillation term
/// when there is a `teacher`. Runs the model in training mode.
///
/// ```
/// use basis_train::data::Batch;
/// use basis_train::{joint_loss, Model, Phase, Recipe};
/// use tch::{nn, Device, Kind, Tensor};
///
/// let recipe = Recipe::default(); // basisnet-fashion
/// let vs = nn::VarStore::new(Device::Cpu);
/// let model = Model::build(&vs.root(), &recipe)?;
/// let batch = Batch {
///     images: Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu)),
///     light_images: None,
///     labels: Tensor::from_slice(&[0i64, 1, 2, 3]),
///     targets: None,
/// };
/// let loss = joint_loss(&model, &batch, &recipe.loss, None, Phase::Joint)?;
/// // Two cross-entropies over 10 classes from a fresh network: about 2 ln 10.
/// assert!((loss.double_value(&[]) - 2.0 * 10f64.ln()).abs() < 1.5);
/// # Ok::<(), basis_train::TrainError>(())
/// ```
pub fn joint_loss(
    model: &Model,
    batch: &Batch,
    loss: &LossSection,
    teacher: Option<&Teacher>,
    phase: Phase,
) -> Result<Tensor, TrainError> {
    let out = model.forward_in(batch, true, phase)?;
    let classes = out.specialist_logits.size()[1];
    let targets = match &batch.targets {
        Some(t) => t.shallow_clone(),
        None => smoothed_targets(&batch.labels, classes, loss.label_smoothing)?,
    };
    let teacher = teacher.map(|t| t.logits(batch)).transpose()?;
    let term = |logits: &Tensor| -> Result<Tensor, TrainError> {
        let mut value = soft_cross_entropy(logits, &targets)?;
        if let Some(t) = &teacher {
            let kd = distillation(logits, t, loss.distill_temperature)?;
            value = value.f_add(&kd.f_mul_scalar(loss.distill_weight)?)?;
        }
        Ok(value)
    };
    let mut total = term(&out.specialist_logits)?;
    if let Some(light) = &out.light_logits {
        total = total.f_add(&term(light)?.f_mul_scalar(loss.light_weight)?)?;
    }
    Ok(total)
}

/// Cross-entropy of `logits [B, K]` against soft targets `[B, K]`, averaged over the
/// batch: `-mean_b sum_k t_bk log softmax(z_b)_k`.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor, TrainError> {
    Ok(logits
        .f_log_softmax(-1, Kind::Float)?
        .f_mul(targets)?
        .f_sum_dim_intlist(-1, false, Kind::Float)?
        .f_neg()?
        .f_mean(Kind::Float)?)
}

/// Label-smoothed one-hot targets `[B, classes]`: `1 - smoothing + smoothing / K` on the
/// label, `smoothing / K` elsewhere (PyTorch's `label_smoothing`).
pub fn smoothed_targets(
    labels: &Tensor,
    classes: i64,
    smoothing: f64,
) -> Result<Tensor, TrainError> {
    let off = smoothing / classes as f64;
    Ok(labels
        .f_one_hot(classes)?
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(1.0 - smoothing)?
        .f_add_scalar(off)?)
}

/// `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch.
pub fn distillation(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor, TrainError> {
    if student.size() != teacher.size() {
        return Err(TrainError::Run(format!(
            "the teacher returns logits {:?}, the student {:?}",
            teacher.size(),
            student.size()
        )));
    }
    let t = teacher
        .f_div_scalar(temperature)?
        .f_softmax(-1, Kind::Float)?;
    let log_s = student
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)?;
    let log_t = t.f_clamp_min(1e-12)?.f_log()?;
    Ok(t.f_mul(&log_t.f_sub(&log_s)?)?
        .f_sum_dim_intlist(-1, false, Kind::Float)?
        .f_mean(Kind::Float)?
        .f_mul_scalar(temperature * temperature)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    fn softmax(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn smoothed_targets_match_pytorch_label_smoothing() {
        let t = smoothed_targets(&Tensor::from_slice(&[2i64, 0]), 4, 0.1).unwrap();
        let rows = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        let expected = [0.025, 0.025, 0.925, 0.025, 0.925, 0.025, 0.025, 0.025];
        for (a, b) in rows.iter().zip(expected) {
            assert!((f64::from(*a) - b).abs() < 1e-7, "{rows:?}");
        }
    }

    #[test]
    fn soft_cross_entropy_is_the_hand_computed_mean() {
        let z = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]];
        let targets = [[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]];
        let mut expected = 0.0;
        for (row, t) in z.iter().zip(&targets) {
            let p = softmax(row);
            expected -= t.iter().zip(&p).map(|(t, p)| t * p.ln()).sum::<f64>();
        }
        expected /= 2.0;
        let logits = Tensor::from_slice(&z.concat()).reshape([2, 3]);
        let t = Tensor::from_slice(&targets.concat())
            .reshape([2, 3])
            .to_kind(Kind::Float);
        let got = value(&soft_cross_entropy(&logits.to_kind(Kind::Float), &t).unwrap());
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn distillation_is_t_squared_kl_and_zero_for_the_teacher_itself() {
        let (s, t, temp) = ([0.5, 1.5, -0.5], [2.0, 0.0, 1.0], 2.0);
        let ps = softmax(&s.map(|v| v / temp));
        let pt = softmax(&t.map(|v| v / temp));
        let kl: f64 = pt.iter().zip(&ps).map(|(a, b)| a * (a / b).ln()).sum();
        let student = Tensor::from_slice(&s).reshape([1, 3]).to_kind(Kind::Float);
        let teacher = Tensor::from_slice(&t).reshape([1, 3]).to_kind(Kind::Float);
        let got = value(&distillation(&student, &teacher, temp).unwrap());
        assert!((got - temp * temp * kl).abs() < 1e-6, "{got}");
        assert!(value(&distillation(&teacher, &teacher, temp).unwrap()).abs() < 1e-6);
        let wrong = Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu));
        assert!(distillation(&wrong, &teacher, temp).is_err());
    }
}
