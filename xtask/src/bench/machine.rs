//! The machine a report was measured on, in one line: CPU model, logical CPUs and the vector
//! extensions libtorch's CPU kernels choose between (AVX2, AVX-512, AVX-512 BF16, AMX).
//! Ratios compare two sides in the same run, but which side wins a row depends on the CPU
//! (oneDNN's AMX kernels for bf16, MKL's code paths per vendor), so every report names it.

use serde_json::{json, Value};

/// What a report says about its CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    /// `model name` of the first processor in `/proc/cpuinfo` (or "unknown CPU").
    pub model: String,
    /// Logical CPUs listed.
    pub cpus: usize,
    /// The extensions present, in the order of [`EXTENSIONS`].
    pub extensions: Vec<&'static str>,
    /// The extensions absent.
    pub missing: Vec<&'static str>,
}

/// The `/proc/cpuinfo` flags reported, and their names in the report.
const EXTENSIONS: [(&str, &str); 4] = [
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("amx_bf16", "AMX BF16"),
];

impl Machine {
    /// This machine (Linux: `/proc/cpuinfo`; elsewhere only the number of CPUs).
    pub(crate) fn here() -> Self {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut machine = Self::parse(&text);
        if machine.cpus == 0 {
            machine.cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        }
        machine
    }

    /// The machine `/proc/cpuinfo`'s `text` describes.
    pub(crate) fn parse(text: &str) -> Self {
        let field = |line: &str, key: &str| -> Option<String> {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        };
        let model = text
            .lines()
            .find_map(|l| field(l, "model name"))
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown CPU".to_string());
        let cpus = text
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count();
        let flags = text
            .lines()
            .find_map(|l| field(l, "flags"))
            .unwrap_or_default();
        let flags: Vec<&str> = flags.split_whitespace().collect();
        let (mut extensions, mut missing) = (Vec::new(), Vec::new());
        for (flag, name) in EXTENSIONS {
            if flags.contains(&flag) {
                extensions.push(name);
            } else {
                missing.push(name);
            }
        }
        Self {
            model,
            cpus,
            extensions,
            missing,
        }
    }

    /// One line for the report: "AMD EPYC, 2 logical CPUs, AVX2, AVX-512, AVX-512 BF16, no AMX BF16".
    pub(crate) fn line(&self) -> String {
        let mut parts = vec![self.model.clone(), format!("{} logical CPUs", self.cpus)];
        parts.extend(self.extensions.iter().map(|e| e.to_string()));
        parts.extend(self.missing.iter().map(|e| format!("no {e}")));
        parts.join(", ")
    }

    /// The same as JSON, for `report.json`'s rows.
    pub(crate) fn json(&self) -> Value {
        json!({
            "cpu": self.model,
            "logical_cpus": self.cpus,
            "extensions": self.extensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n";
    const INTEL: &str = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n";

    #[test]
    fn names_the_cpu_and_its_extensions() {
        let m = Machine::parse(AMD);
        assert_eq!(m.model, "AMD EPYC");
        assert_eq!(m.cpus, 2);
        assert_eq!(m.extensions, ["AVX2", "AVX-512", "AVX-512 BF16"]);
        assert_eq!(
            m.line(),
            "AMD EPYC, 2 logical CPUs, AVX2, AVX-512, AVX-512 BF16, no AMX BF16"
        );
        let i = Machine::parse(INTEL);
        assert_eq!(i.cpus, 1);
        assert!(i.missing.is_empty());
        assert!(i.line().ends_with("AMX BF16"));
        assert_eq!(i.json()["extensions"][3], "AMX BF16");
    }

    #[test]
    fn an_unreadable_cpuinfo_says_so() {
        let m = Machine::parse("");
        assert_eq!(m.model, "unknown CPU");
        assert_eq!(m.cpus, 0);
        assert_eq!(m.extensions.len(), 0);
    }
}
