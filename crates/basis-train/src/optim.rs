//! Optimizers whose state is saved and restored, and the exponential moving average of
//! weights (the learning rate comes from [`crate::schedule`]).
//!
//! The updates follow PyTorch's `SGD` and `AdamW` and timm's `RMSpropTF` (TensorFlow's
//! RMSProp: squared average starting at one, epsilon inside the square root, learning rate
//! inside the momentum buffer). Weight decay skips batch-norm parameters and biases unless
//! the recipe asks.

use crate::recipe::{OptimSection, OptimizerKind};
use std::collections::BTreeMap;
use tch::{nn, Tensor};

/// One trainable variable and whether weight decay applies to it.
struct Param {
    name: String,
    tensor: Tensor,
    decay: bool,
}

/// An optimizer over the trainable variables of a `VarStore`.
pub struct Optimizer {
    config: OptimSection,
    params: Vec<Param>,
    state: BTreeMap<String, Tensor>,
    step: i64,
}

/// Whether a variable is a batch-norm parameter or a bias (no weight decay by default).
pub fn is_norm_or_bias(name: &str, tensor: &Tensor) -> bool {
    name.ends_with("bias") || tensor.dim() <= 1
}

impl Optimizer {
    /// Over every trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore, config: OptimSection) -> Self {
        let trainable: Vec<Tensor> = vs.trainable_variables();
        let mut params: Vec<Param> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| trainable.iter().any(|v| v.is_set_to(t)))
            .map(|(name, tensor)| Param {
                decay: config.decay_norm_and_bias || !is_norm_or_bias(&name, &tensor),
                name,
                tensor,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            config,
            params,
            state: BTreeMap::new(),
            step: 0,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// The gradients of the trainable variables (undefined where backward gave none).
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.tensor.grad()).collect()
    }

    /// Zero every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn buffer(&mut self, key: String, like: &Tensor, init: f64) -> Tensor {
        self.state
            .entry(key)
            .or_insert_with(|| like.zeros_like().fill_(init))
            .shallow_clone()
    }

    /// One update with learning rate `lr` from the current gradients.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.config.clone();
        let t = self.step as i32;
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let (name, mut p, decay) = {
                    let param = &self.params[i];
                    (
                        param.name.clone(),
                        param.tensor.shallow_clone(),
                        param.decay,
                    )
                };
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let wd = if decay { c.weight_decay } else { 0.0 };
                match c.name {
                    OptimizerKind::Sgd => {
                        let g = if wd > 0.0 {
                            &grad + &p * wd
                        } else {
                            grad.shallow_clone()
                        };
                        let update = if c.momentum > 0.0 {
                            let fresh =
                                !self.state.contains_key(&format!("{name}.momentum_buffer"));
                            let mut buf = self.buffer(format!("{name}.momentum_buffer"), &p, 0.0);
                            if fresh {
                                buf.copy_(&g);
                            } else {
                                let _ = buf.g_mul_scalar_(c.momentum).g_add_(&g);
                            }
                            if c.nesterov {
                                &g + &buf * c.momentum
                            } else {
                                buf
                            }
                        } else {
                            g
                        };
                        let _ = p.g_sub_(&(update * lr));
                    }
                    OptimizerKind::Rmsprop => {
                        let g = if wd > 0.0 {
                            &grad + &p * wd
                        } else {
                            grad.shallow_clone()
                        };
                        let mut sq = self.buffer(format!("{name}.square_avg"), &p, 1.0);
                        let _ = sq
                            .g_mul_scalar_(c.alpha)
                            .g_add_(&(&g * &g * (1.0 - c.alpha)));
                        let step = &g / (&sq + c.eps).sqrt() * lr;
                        if c.momentum > 0.0 {
                            let mut buf = self.buffer(format!("{name}.momentum_buffer"), &p, 0.0);
                            let _ = buf.g_mul_scalar_(c.momentum).g_add_(&step);
                            let _ = p.g_sub_(&buf);
                        } else {
                            let _ = p.g_sub_(&step);
                        }
                    }
                    OptimizerKind::Adamw => {
                        if wd > 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let [b1, b2] = c.betas;
                        let mut m = self.buffer(format!("{name}.exp_avg"), &p, 0.0);
                        let mut v = self.buffer(format!("{name}.exp_avg_sq"), &p, 0.0);
                        let _ = m.g_mul_scalar_(b1).g_add_(&(&grad * (1.0 - b1)));
                        let _ = v.g_mul_scalar_(b2).g_add_(&(&grad * &grad * (1.0 - b2)));
                        let m_hat = &m / (1.0 - b1.powi(t));
                        let v_hat = &v / (1.0 - b2.powi(t));
                        let _ = p.g_sub_(&(m_hat / (v_hat.sqrt() + c.eps) * lr));
                    }
                }
            }
        });
    }

    /// The state as named tensors (`<variable>.<buffer>` and `step`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .state
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        out.push(("step".into(), Tensor::from(self.step)));
        out
    }

    /// Restore the state written by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        self.state.clear();
        for (k, v) in tensors {
            if k == "step" {
                if v.numel() != 1 || v.is_floating_point() {
                    return Err(format!(
                        "optimizer state step must be one integer, found a {:?} tensor of shape {:?}",
                        v.kind(),
                        v.size()
                    ));
                }
                self.step = v
                    .f_reshape([-1])
                    .and_then(|t| t.f_int64_value(&[0]))
                    .map_err(|e| format!("optimizer state step: {e}"))?;
                continue;
            }
            let (var, _) = k
                .rsplit_once('.')
                .ok_or_else(|| format!("optimizer state {k} is not <variable>.<buffer>"))?;
            let param =
                self.params.iter().find(|p| p.name == var).ok_or_else(|| {
                    format!("optimizer state {k} names no variable of this model")
                })?;
            if param.tensor.size() != v.size() {
                return Err(format!(
                    "optimizer state {k} has shape {:?}, the variable {:?}",
                    v.size(),
                    param.tensor.size()
                ));
            }
            self.state.insert(
                k.clone(),
                v.to_kind(param.tensor.kind())
                    .to_device(param.tensor.device()),
            );
        }
        Ok(())
    }
}

/// Exponential moving average of every variable of a model (batch-norm statistics
/// included), kept in a second `VarStore` of the same structure.
pub struct Ema {
    decay: f64,
    pairs: Vec<(Tensor, Tensor)>,
}

impl Ema {
    /// Start `ema` (a store of the same model) as a copy of `model`.
    pub fn new(model: &nn::VarStore, ema: &nn::VarStore, decay: f64) -> Result<Self, String> {
        let src = model.variables();
        let dst = ema.variables();
        let mut pairs = Vec::with_capacity(src.len());
        for (name, s) in src {
            let d = dst
                .get(&name)
                .ok_or_else(|| format!("the EMA model has no variable {name}"))?;
            tch::no_grad(|| d.shallow_clone().copy_(&s));
            pairs.push((s, d.shallow_clone()));
        }
        Ok(Self { decay, pairs })
    }

    /// The decay used after optimizer step `step` (1-based): the recipe's, warmed up as
    /// `min(decay, (1 + step) / (10 + step))` (TensorFlow's `num_updates`, timm's EMA
    /// warmup), so the first steps' weights and batch-norm statistics, which are far from
    /// the final ones, fade out of a short run's average.
    ///
    /// ```
    /// # use basis_train::optim::Ema;
    /// assert_eq!(Ema::decay_at(0.9999, 1), 2.0 / 11.0);
    /// assert_eq!(Ema::decay_at(0.998, 100_000), 0.998);
    /// ```
    pub fn decay_at(decay: f64, step: i64) -> f64 {
        let step = step.max(0) as f64;
        decay.min((1.0 + step) / (10.0 + step))
    }

    /// `ema = d * ema + (1 - d) * model` with `d = decay_at(decay, step)`, `step` the
    /// optimizer steps taken (integer counters are copied).
    pub fn update(&self, step: i64) {
        let decay = Self::decay_at(self.decay, step);
        tch::no_grad(|| {
            for (s, d) in &self.pairs {
                let mut d = d.shallow_clone();
                if s.is_floating_point() {
                    let _ = d.g_mul_scalar_(decay).g_add_(&(s * (1.0 - decay)));
                } else {
                    d.copy_(s);
                }
            }
        });
    }
}
