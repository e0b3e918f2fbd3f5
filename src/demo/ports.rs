//! The demo's block of loopback ports, and finding a block that is free: a newcomer who runs
//! the demo twice, or has something on 18080, should get a working sandbox or a message that
//! says what to do, never a bare "Address already in use".

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::Context;

/// Where the demo starts looking when `--base-port` is not given.
const DEFAULT_BASE: u16 = 18000;
/// How far apart candidate blocks are: past the highest offset (1082), so blocks never overlap.
const BLOCK: u16 = 1200;
/// How many blocks are tried before giving up.
const ATTEMPTS: u16 = 10;

/// The demo's ports: peerguard listens on `base + 80..`, the app on `base + 1080..`.
pub struct Ports {
    pub base: u16,
    pub permissive: (u16, u16),
    pub strict: (u16, u16),
    pub disable: (u16, u16),
    pub admin: u16,
    pub health: u16,
    /// The development mesh CA of `demo --mesh-ca`.
    pub ca: u16,
}

impl Ports {
    fn from_base(base: u16) -> anyhow::Result<Ports> {
        let at = |offset: u16| {
            base.checked_add(offset)
                .with_context(|| format!("--base-port {base} is too high: the demo needs base+1082 to be a port"))
        };
        Ok(Ports {
            base,
            permissive: (at(80)?, at(1080)?),
            strict: (at(81)?, at(1081)?),
            disable: (at(82)?, at(1082)?),
            admin: at(1000)?,
            health: at(1021)?,
            ca: at(1012)?,
        })
    }

    fn all(&self) -> [u16; 9] {
        let (p, s, d) = (self.permissive, self.strict, self.disable);
        [p.0, s.0, d.0, p.1, s.1, d.1, self.admin, self.health, self.ca]
    }

    /// The first of the block's ports that something else holds on 127.0.0.1.
    fn first_taken(&self) -> Option<u16> {
        self.all()
            .into_iter()
            .find(|&port| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err())
    }
}

/// The block at `--base-port` if it is free (a taken port is an error with a hint), or without
/// it the first free block from 18000 up.
pub fn choose(base_port: Option<u16>) -> anyhow::Result<Ports> {
    if let Some(base) = base_port {
        let ports = Ports::from_base(base)?;
        return match ports.first_taken() {
            None => Ok(ports),
            Some(port) => anyhow::bail!(
                "port 127.0.0.1:{port} is taken (another demo still running?): the demo uses \
                 {base}+80..{base}+1082; choose another block with --base-port, or leave it out to \
                 let the demo find a free one"
            ),
        };
    }
    for attempt in 0..ATTEMPTS {
        let ports = Ports::from_base(DEFAULT_BASE + attempt * BLOCK)?;
        if ports.first_taken().is_none() {
            return Ok(ports);
        }
    }
    anyhow::bail!(
        "no free block of demo ports from {DEFAULT_BASE} to {}: choose one with --base-port",
        DEFAULT_BASE + ATTEMPTS * BLOCK
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_base_port_is_refused_with_a_hint_and_a_free_block_is_found_without_one() {
        let Ok(holder) = TcpListener::bind("127.0.0.1:0") else {
            panic!("a free loopback port");
        };
        let taken = holder.local_addr().unwrap().port();
        let Some(base) = taken.checked_sub(80) else {
            return; // a port below 80 cannot be a demo port: nothing to test with it
        };
        let message = choose(Some(base)).err().expect("a taken port is an error").to_string();
        assert!(
            message.contains(&format!("port 127.0.0.1:{taken} is taken")),
            "{message}"
        );
        assert!(message.contains("--base-port"), "{message}");
        let found = choose(None).expect("some block is free");
        assert!(found.first_taken().is_none());
    }

    #[test]
    fn a_base_too_high_for_the_block_is_refused() {
        assert!(choose(Some(65000)).is_err());
    }
}
