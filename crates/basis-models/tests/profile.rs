//! The profiler reproduces `mobilenet-costs.md` (torchvision 0.28's figures) row by row,
//! and a BasisNet's profile splits its cost as the paper counts it.

use basis_models::{presets, Arch, BasisNet, BasisSpec, MobileNet, MobileNetConfig};
use tch::{nn, Device};

/// architecture, width, resolution, params, MAdds (1000 classes, 3 channels).
#[rustfmt::skip]
const COSTS: &[(&str, f64, i64, i64, i64)] = &[
    ("mobilenet_v2", 1.0, 224, 3504872, 300774272),
    ("mobilenet_v2", 1.0, 192, 3504872, 221316608),
    ("mobilenet_v2", 1.0, 160, 3504872, 154083200),
    ("mobilenet_v2", 1.0, 128, 3504872, 99074048),
    ("mobilenet_v2", 1.0, 96, 3504872, 56289152),
    ("mobilenet_v2", 1.0, 64, 3504872, 25728512),
    ("mobilenet_v2", 1.0, 32, 3504872, 7392128),
    ("mobilenet_v2", 0.75, 224, 2636424, 209069792),
    ("mobilenet_v2", 0.5, 224, 1968680, 97131840),
    ("mobilenet_v3_large", 1.0, 224, 5483032, 216589760),
    ("mobilenet_v3_large", 1.0, 192, 5483032, 160192640),
    ("mobilenet_v3_large", 1.0, 160, 5483032, 112472000),
    ("mobilenet_v3_large", 1.0, 128, 5483032, 73427840),
    ("mobilenet_v3_large", 1.0, 96, 5483032, 43060160),
    ("mobilenet_v3_large", 1.0, 64, 5483032, 21368960),
    ("mobilenet_v3_large", 1.0, 32, 5483032, 8354240),
    ("mobilenet_v3_large", 0.75, 224, 3377576, 140033816),
    ("mobilenet_v3_large", 0.5, 224, 1734576, 64962192),
    ("mobilenet_v3_small", 1.0, 224, 2542856, 56510400),
    ("mobilenet_v3_small", 1.0, 192, 2542856, 42067712),
    ("mobilenet_v3_small", 1.0, 160, 2542856, 29846976),
    ("mobilenet_v3_small", 1.0, 128, 2542856, 19848192),
    ("mobilenet_v3_small", 1.0, 96, 2542856, 12071360),
    ("mobilenet_v3_small", 1.0, 64, 2542856, 6516480),
    ("mobilenet_v3_small", 1.0, 32, 2542856, 3183552),
    ("mobilenet_v3_small", 0.75, 224, 1653920, 39115576),
    ("mobilenet_v3_small", 0.5, 224, 917264, 18970736),
];

#[test]
fn profile_reproduces_the_torchvision_cost_table() {
    for &(arch, width, resolution, params, madds) in COSTS {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = MobileNetConfig::new(Arch::from_name(arch).unwrap()).width(width);
        let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed()).unwrap();
        let profile = net.profile(resolution).unwrap();
        let row = format!("{arch} {width} {resolution}px");
        assert_eq!(profile.total.params, params, "{row} params");
        assert_eq!(profile.total.madds, madds, "{row} madds");
        assert_eq!(profile.total.synthesis_madds, 0, "{row} static synthesis");
        // The profile counts what the network holds.
        let held: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(held, params, "{row} trainable variables");
    }
}

#[test]
fn basisnet_mv3_costs_73m_plus_217m() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = BasisNet::new(&vs.root(), presets::get("basisnet-mv3").unwrap()).unwrap();
    let p = net.profile();
    assert_eq!(p.lightweight.total.madds, 73_427_840);
    assert_eq!(p.specialist.total.madds, 216_589_760);
    // The head: 960 pooled features -> 8 coefficients.
    assert_eq!(p.coefficient_head_madds, 960 * 8);
    // Synthesis: one multiply-add per basis per synthesized parameter. The specialist
    // holds 8 copies of those and one of batch norm, the static network one of each.
    assert_eq!(p.synthesis_madds % 8, 0);
    let synthesized = p.synthesis_madds / 8;
    assert_eq!(p.specialist.total.params - 5_483_032, 7 * synthesized);
    assert_eq!(
        p.total_madds(),
        73_427_840 + 960 * 8 + 216_589_760 + p.synthesis_madds
    );
    // 42% exits: about the paper's 198M average if synthesis were not counted.
    let avg = p.average_madds(0.42);
    assert!(
        (avg - (p.total_madds() as f64 - 0.42 * (216_589_760 + p.synthesis_madds) as f64)).abs()
            < 1.0
    );
}

#[test]
fn resolution_below_the_strides_is_refused() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = MobileNet::new(
        &vs.root(),
        MobileNetConfig::new(Arch::MobilenetV3Large),
        BasisSpec::fixed(),
    )
    .unwrap();
    assert_eq!(net.min_resolution(), 17);
    assert!(net.profile(17).is_ok());
    let err = net.profile(16).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mobilenet_v3_large: input of 16x16 px is too small; its 5 stride-2 layers need at least 17 px"
    );
}

#[test]
fn every_profile_row_names_the_variables_it_counts() {
    // A static MobileNetV2 and a BasisNet (its specialist has N = 4 under `specialist.`).
    let vs = nn::VarStore::new(Device::Cpu);
    let config = MobileNetConfig::new(Arch::MobilenetV2);
    let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed()).unwrap();
    let bn_vs = nn::VarStore::new(Device::Cpu);
    let basisnet = BasisNet::new(&bn_vs.root(), presets::get("basisnet-fashion").unwrap()).unwrap();
    let static_profile = net.profile(224).unwrap();
    for (profile, store) in [
        (&static_profile, &vs),
        (&basisnet.profile().specialist, &bn_vs),
    ] {
        let variables = store.variables();
        let mut counted = 0;
        for row in &profile.layers {
            assert!(!row.variables.is_empty(), "{}", row.name);
            let params: i64 = row
                .variables
                .iter()
                .map(|v| {
                    variables
                        .get(v)
                        .unwrap_or_else(|| panic!("{v} of {}", row.name))
                        .numel() as i64
                })
                .sum();
            assert_eq!(params, row.params, "{}", row.name);
            counted += row.variables.len();
        }
        let trainable = variables
            .keys()
            .filter(|k| !k.contains("running") && !k.contains("num_batches"))
            .count();
        let specialist = variables
            .keys()
            .filter(|k| {
                k.starts_with("specialist.") && !k.contains("running") && !k.contains("num_batches")
            })
            .count();
        assert!(
            counted == trainable || counted == specialist,
            "{counted} of {trainable}"
        );
    }
    let stem = &static_profile.layers[0];
    assert_eq!(
        stem.variables,
        [
            "features.0.0.weight",
            "features.0.1.weight",
            "features.0.1.bias"
        ]
    );
    assert!(basisnet.profile().specialist.layers[0].variables[0]
        .starts_with("specialist.features.0.0."));
}
