//! Every port of one workload resolved at once: the ports something names (a policy, a
//! Service, `--app-protocol`), and the one answer every other port shares. The proxy keeps this
//! per policy generation; `check` prints it. Resolution of a single port stays in `set`.

use super::{PolicySet, PortPolicy, PortProtocol, ProtocolOverrides, Workload};

/// One port's mode (with the policy that set it) and app protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPort {
    pub policy: PortPolicy,
    pub protocol: PortProtocol,
}

/// A workload's ports as resolution gives them.
#[derive(Debug, Clone)]
pub struct WorkloadPorts {
    /// Ports something names, in port order.
    pub named: Vec<ResolvedPort>,
    /// Every other port (its `policy.port` is 0: it stands for all of them).
    pub other: ResolvedPort,
    /// One port nothing names, resolved as `other`: a real port number for questions that
    /// need one (an authorization verdict's port).
    pub unnamed_port: u16,
}

impl WorkloadPorts {
    /// The answer for `port`: its own if something names it, else the shared one.
    pub fn port(&self, port: u16) -> &ResolvedPort {
        match self.named.binary_search_by_key(&port, |p| p.policy.port) {
            Ok(index) => &self.named[index],
            Err(_) => &self.other,
        }
    }
}

impl PolicySet {
    /// Resolves every port of `workload`. A port nothing names resolves like any other such
    /// port, so one of them is resolved to stand for all.
    pub fn resolve_ports(&self, workload: &Workload, overrides: &ProtocolOverrides) -> WorkloadPorts {
        let known = self.known_ports(workload, overrides);
        let resolve = |port| ResolvedPort {
            policy: self.resolve(workload, port),
            protocol: self.protocol(workload, port, overrides),
        };
        let unnamed_port = (1..=u16::MAX).find(|p| !known.contains(p)).unwrap_or(u16::MAX);
        let mut other = resolve(unnamed_port);
        other.policy.port = 0;
        WorkloadPorts {
            named: known.iter().map(|&port| resolve(port)).collect(),
            other,
            unnamed_port,
        }
    }
}
