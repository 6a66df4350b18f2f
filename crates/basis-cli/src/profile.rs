//! `basisnet profile`: the per-layer cost table of a backbone or a preset.

use anyhow::{Context, Result};
use basis_models::{presets, Arch, BasisNet, BasisSpec, MobileNet, MobileNetConfig};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use serde_json::json;
use tch::{nn, Device};

/// `--arch`: one of the architecture tables, by torchvision's name.
pub fn arch_parser() -> impl TypedValueParser<Value = Arch> {
    PossibleValuesParser::new(Arch::ALL.map(Arch::name))
        .try_map(|name| Arch::from_name(&name).ok_or("not an architecture"))
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet profile --arch mobilenet_v2 --width 0.75 --resolution 192\n  basisnet profile --arch mobilenet_v3_small --in-chans 1 --classes 10 --resolution 28 --json\n  basisnet profile --preset basisnet-mv3 --json"
)]
pub struct ProfileArgs {
    /// A BasisNet preset.
    #[arg(
        long,
        conflicts_with_all = ["arch", "width", "in_chans", "classes", "resolution"],
        value_parser = PossibleValuesParser::new(presets::names()),
    )]
    preset: Option<String>,
    /// Backbone.
    #[arg(long, default_value = "mobilenet_v3_large", value_parser = arch_parser())]
    arch: Arch,
    /// Width multiplier.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    in_chans: i64,
    /// Classes.
    #[arg(long, default_value_t = 1000)]
    classes: i64,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    resolution: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ProfileArgs) -> Result<()> {
    let vs = nn::VarStore::new(Device::Cpu);
    if let Some(name) = &args.preset {
        let config = presets::get(name)?;
        let net =
            BasisNet::new(&vs.root(), config).with_context(|| format!("building preset {name}"))?;
        let p = net.profile();
        if args.json {
            let out = json!({
                "preset": name,
                "lightweight": {
                    "arch": config.lightweight.arch.name(),
                    "resolution": config.lightweight_resolution,
                    "madds": p.lightweight.total.madds,
                    "params": p.lightweight.total.params,
                    "layers": p.lightweight.layers,
                },
                "coefficient_head": {"madds": p.coefficient_head_madds},
                "specialist": {
                    "arch": config.specialist.arch.name(),
                    "resolution": config.resolution,
                    "num_bases": config.basis.num_bases,
                    "madds": p.specialist.total.madds,
                    "params": p.specialist.total.params,
                    "layers": p.specialist.layers,
                },
                "synthesis": {"madds": p.synthesis_madds},
                "total": {"params": p.params, "madds": p.total_madds()},
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!(
                "lightweight ({} at {} px):",
                config.lightweight.arch, config.lightweight_resolution
            );
            print!("{}", p.lightweight.to_table());
            println!(
                "\nspecialist ({} at {} px, N = {}):",
                config.specialist.arch, config.resolution, config.basis.num_bases
            );
            print!("{}", p.specialist.to_table());
            println!();
            println!("lightweight      {:>14} MAdds", p.lightweight.total.madds);
            println!("coefficient head {:>14} MAdds", p.coefficient_head_madds);
            println!("specialist       {:>14} MAdds", p.specialist.total.madds);
            println!("synthesis        {:>14} MAdds", p.synthesis_madds);
            println!(
                "total            {:>14} MAdds, {} params",
                p.total_madds(),
                p.params
            );
        }
        return Ok(());
    }
    let arch = args.arch;
    let config = MobileNetConfig::new(arch)
        .width(args.width)
        .in_channels(args.in_chans)
        .classes(args.classes);
    let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed())?;
    let profile = net.profile(args.resolution)?;
    if args.json {
        let out = json!({
            "arch": arch.name(),
            "width": args.width,
            "in_chans": args.in_chans,
            "classes": args.classes,
            "resolution": args.resolution,
            "layers": profile.layers,
            "total": {"params": profile.total.params, "madds": profile.total.madds},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", profile.to_table());
    }
    Ok(())
}
