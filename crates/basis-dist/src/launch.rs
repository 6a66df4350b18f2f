//! Where a process sits in a job, read from what the launcher set: `torchrun`, Slurm's
//! `srun`, or `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` set by hand (PyTorch's
//! `env://` convention).

use crate::DistError;

/// Which launcher started the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun` (torch.distributed.elastic): its agent already hosts the TCP store.
    Torchrun,
    /// Slurm's `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`.
    Slurm,
    /// `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` (and `LOCAL_RANK`) set by hand.
    Env,
}

/// One process's place in a job and where the rendezvous store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, in `0..world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this node (picks the GPU).
    pub local_rank: usize,
    /// Host of the rendezvous store (rank 0's machine).
    pub master_addr: String,
    /// Port of the rendezvous store.
    pub master_port: u16,
    /// Who started the process.
    pub launcher: Launcher,
    /// The launcher's agent hosts the store (torchrun): every rank connects as a client.
    pub agent_store: bool,
    /// Restarts so far of an elastic job (keys of each attempt live under their own prefix).
    pub restart: usize,
}

/// A TCP port that is free on this machine now (the operating system's pick), for a store
/// of a job on this machine.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Port Slurm jobs use when `MASTER_PORT` is unset: the same on every task of a job,
/// different between jobs (PyTorch Lightning's convention).
pub fn slurm_port(job_id: u64) -> u16 {
    (10_000 + job_id % 20_000) as u16
}

/// The first host of a Slurm node list: `node[03-05,07],gpu1` gives `node03`.
///
/// ```
/// assert_eq!(basis_dist::launch::first_host("node[03-05,07],gpu1").as_deref(), Some("node03"));
/// assert_eq!(basis_dist::launch::first_host("a100-1,a100-2").as_deref(), Some("a100-1"));
/// assert_eq!(basis_dist::launch::first_host(""), None);
/// ```
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let (mut depth, mut end) = (0, list.len());
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let first = &list[..end];
    (!first.is_empty()).then(|| expand_first(first))
}

/// `rack[1-2]-n[3,5]` gives `rack1-n3`: the first value of every bracket.
fn expand_first(host: &str) -> String {
    let Some(open) = host.find('[') else {
        return host.to_string();
    };
    let Some(close) = host[open..].find(']').map(|c| c + open) else {
        return host.to_string();
    };
    let inner = &host[open + 1..close];
    let first = inner.split(',').next().unwrap_or("");
    let first = first.split('-').next().unwrap_or("");
    format!(
        "{}{first}{}",
        &host[..open],
        expand_first(&host[close + 1..])
    )
}

impl Launch {
    /// Read the process environment; `Ok(None)` when no launcher variables are set.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Read launcher variables through `var` (the environment, or a map in tests).
    ///
    /// `torchrun` wins over hand-set variables, which win over Slurm's (a `torchrun` inside
    /// `srun` sets `RANK`).
    ///
    /// ```
    /// use basis_dist::launch::{Launch, Launcher};
    /// let vars = [("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];
    /// let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    /// let launch = Launch::from_vars(get)?.unwrap();
    /// assert_eq!((launch.rank, launch.world_size, launch.launcher), (1, 2, Launcher::Env));
    /// # Ok::<(), basis_dist::DistError>(())
    /// ```
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let torchrun = var("TORCHELASTIC_RUN_ID").is_some();
        let launch = if torchrun || var("RANK").is_some() || var("WORLD_SIZE").is_some() {
            let launcher = if torchrun {
                Launcher::Torchrun
            } else {
                Launcher::Env
            };
            let rank = number(&var, "RANK")?;
            let world_size = number(&var, "WORLD_SIZE")?;
            let local_rank = optional_number(&var, "LOCAL_RANK")?;
            let master_addr = required(&var, "MASTER_ADDR")?;
            let master_port = port(&var, "MASTER_PORT")?;
            let agent_store = torchrun
                && var("TORCHELASTIC_USE_AGENT_STORE")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let restart = optional_number(&var, "TORCHELASTIC_RESTART_COUNT")?;
            Launch {
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
                launcher,
                agent_store,
                restart,
            }
        } else if var("SLURM_PROCID").is_some() && var("SLURM_NTASKS").is_some() {
            let rank = number(&var, "SLURM_PROCID")?;
            let world_size = number(&var, "SLURM_NTASKS")?;
            let local_rank = optional_number(&var, "SLURM_LOCALID")?;
            let master_addr = match var("MASTER_ADDR") {
                Some(addr) => addr,
                None => var("SLURM_STEP_NODELIST")
                    .or_else(|| var("SLURM_JOB_NODELIST"))
                    .as_deref()
                    .and_then(first_host)
                    .ok_or_else(|| {
                        DistError::Launch(
                            "under Slurm, MASTER_ADDR or SLURM_STEP_NODELIST must name rank 0's \
                             host; neither is set"
                                .into(),
                        )
                    })?,
            };
            let master_port = match var("MASTER_PORT") {
                Some(_) => port(&var, "MASTER_PORT")?,
                None => match var("SLURM_JOB_ID") {
                    Some(_) => slurm_port(number(&var, "SLURM_JOB_ID")? as u64),
                    None => {
                        return Err(DistError::Launch(
                            "under Slurm, MASTER_PORT or SLURM_JOB_ID must be set to pick the \
                             store's port; neither is"
                                .into(),
                        ))
                    }
                },
            };
            Launch {
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
                launcher: Launcher::Slurm,
                agent_store: false,
                restart: 0,
            }
        } else {
            return Ok(None);
        };
        if launch.world_size == 0 || launch.rank >= launch.world_size {
            return Err(DistError::Launch(format!(
                "rank {} does not fit a world of {} processes (expected 0 <= rank < world size)",
                launch.rank, launch.world_size
            )));
        }
        Ok(Some(launch))
    }

    /// A job of one process on this machine (rank 0 of 1) with the store on `port`.
    pub fn single(port: u16) -> Self {
        Launch {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            launcher: Launcher::Env,
            agent_store: false,
            restart: 0,
        }
    }

    /// Rank `rank` of a job of `world_size` processes on this machine, the store on `port`.
    pub fn local(rank: usize, world_size: usize, port: u16) -> Self {
        Launch {
            rank,
            world_size,
            local_rank: rank,
            ..Self::single(port)
        }
    }

    /// The variables a launcher sets for this process (PyTorch's `env://` names): start a
    /// rank by hand with `Command::envs(launch.env())`, and [`Launch::from_env`] there
    /// reads them back.
    ///
    /// ```
    /// use basis_dist::Launch;
    /// let env = Launch::local(1, 2, 29500).env();
    /// let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    /// assert_eq!(Launch::from_vars(get)?, Some(Launch::local(1, 2, 29500)));
    /// # Ok::<(), basis_dist::DistError>(())
    /// ```
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }

    /// Whether this is rank 0 (the one that writes checkpoints and logs).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Whether this process hosts the store: rank 0, unless torchrun's agent does.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// Keys of this job live under this prefix in the store (torchrun's layout when its
    /// agent hosts the store, so restarts do not meet the keys of earlier attempts).
    pub fn store_prefix(&self) -> String {
        format!("/worker/attempt_{}", self.restart)
    }
}

fn required(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<String, DistError> {
    var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
        DistError::Launch(format!(
            "{name} is not set; a distributed run needs RANK, WORLD_SIZE, MASTER_ADDR and \
             MASTER_PORT (torchrun and srun set them, or set them by hand)"
        ))
    })
}

fn number(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<usize, DistError> {
    let text = required(var, name)?;
    text.trim()
        .parse()
        .map_err(|_| DistError::Launch(format!("{name} is {text:?}; expected a whole number >= 0")))
}

/// `name` as a number, 0 when unset.
fn optional_number(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<usize, DistError> {
    match var(name) {
        Some(_) => number(var, name),
        None => Ok(0),
    }
}

fn port(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<u16, DistError> {
    let text = required(var, name)?;
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(DistError::Launch(format!(
            "{name} is {text:?}; expected a TCP port in 1..65535"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn no_launcher_variables_is_not_distributed() {
        assert_eq!(launch(&[("HOME", "/root")]).unwrap(), None);
    }

    #[test]
    fn torchrun_with_its_agent_store() {
        let l = launch(&[
            ("TORCHELASTIC_RUN_ID", "none"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
            ("RANK", "0"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert!(
            l.agent_store && !l.hosts_store(),
            "torchrun's agent hosts the store"
        );
        assert_eq!(l.store_prefix(), "/worker/attempt_2");
        assert_eq!((l.rank, l.world_size, l.master_port), (0, 4, 29500));
    }

    #[test]
    fn by_hand_rank_zero_hosts_the_store() {
        let l = launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "23456"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Env);
        assert!(l.hosts_store() && l.is_main());
        assert_eq!((l.local_rank, l.master_addr.as_str()), (0, "node1"));
    }

    #[test]
    fn slurm_takes_rank_and_host_from_its_variables() {
        let l = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_NODELIST", "gpu[07-08]"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Slurm);
        assert_eq!((l.rank, l.world_size, l.local_rank), (5, 8, 1));
        assert_eq!(l.master_addr, "gpu07");
        assert_eq!(l.master_port, 10_000 + (123_456 % 20_000) as u16);
        // RANK set by hand (or by torchrun inside srun) wins over Slurm's.
        let l = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.launcher, l.rank), (Launcher::Env, 1));
    }

    #[test]
    fn bad_values_are_one_sentence_naming_the_variable() {
        let e = |vars: &[(&str, &str)]| launch(vars).unwrap_err().to_string();
        let base = [("MASTER_ADDR", "h"), ("MASTER_PORT", "1234")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = base.to_vec();
            v.extend_from_slice(extra);
            e(&v)
        };
        assert!(with(&[("RANK", "one"), ("WORLD_SIZE", "2")]).contains("RANK is \"one\""));
        assert!(with(&[("RANK", "2"), ("WORLD_SIZE", "2")])
            .contains("rank 2 does not fit a world of 2"));
        assert!(
            e(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")])
                .contains("MASTER_PORT is not set")
        );
        assert!(
            e(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")])
                .contains("MASTER_ADDR is not set")
        );
        assert!(e(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000")
        ])
        .contains("MASTER_PORT is \"70000\"; expected a TCP port"));
        assert!(e(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")])
            .contains("MASTER_ADDR or SLURM_STEP_NODELIST"));
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("n1").as_deref(), Some("n1"));
        assert_eq!(first_host("rack[1-2]-n[3-4]").as_deref(), Some("rack1-n3"));
        assert_eq!(first_host("gpu[007,010-012]").as_deref(), Some("gpu007"));
    }
}
