//! The loaders of a run, from its recipe: training (shuffled, augmented, mixed, this
//! rank's part of every batch) and evaluation (in order, the evaluation transforms), the
//! same for training and for every command that evaluates a run afterwards.

use crate::data::{Loader, LoaderConfig, Shard, Split};
use crate::error::TrainError;
use crate::recipe::Recipe;

/// The training loader of `recipe`: its dataset's training split, shuffled and augmented
/// with [`Recipe::transforms`], mixed when the recipe mixes, batches of
/// `train.batch_size` of which this process takes the part `shard` names; incomplete last
/// batches are dropped.
pub fn train_loader(recipe: &Recipe, shard: Shard) -> Result<Loader, TrainError> {
    let mut loader = Loader::new(
        recipe.data.open(Split::Train, recipe.in_channels()?)?,
        recipe.transforms()?,
        true,
        LoaderConfig {
            batch_size: recipe.train.batch_size,
            workers: recipe.data.workers,
            seed: recipe.train.seed,
            strict: recipe.data.strict,
            max_bad_fraction: recipe.data.max_bad_fraction,
            drop_last: true,
            shard,
            ..LoaderConfig::default()
        },
    )?;
    if let Some(mix) = &recipe.data.mix {
        loader = loader.with_mix(mix.clone())?;
    }
    Ok(loader)
}

/// The loader a run is evaluated with, by training and by every command afterwards:
/// `split` of the recipe's dataset, its evaluation transforms ([`Recipe::transforms`]),
/// in order, batches of `max(train.batch_size, 256)`.
pub fn eval_loader(recipe: &Recipe, split: Split) -> Result<Loader, TrainError> {
    Ok(Loader::new(
        recipe.data.open(split, recipe.in_channels()?)?,
        recipe.transforms()?,
        false,
        LoaderConfig {
            batch_size: recipe.train.batch_size.max(256),
            workers: recipe.data.workers,
            seed: recipe.train.seed,
            strict: recipe.data.strict,
            max_bad_fraction: recipe.data.max_bad_fraction,
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        },
    )?)
}
