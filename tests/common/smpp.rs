//! An SMPP test client (an ESME on loopback) and a relay with one SMPP listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use relaylog::serve::SimulatorStats;
use relaylog::simulator::smpp::SmscStats;
use relaylog::smpp::{Address, Bind, Dest, Header, Message, Tlvs, Writer, frame_len, id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::init_keys;

pub const T: Duration = Duration::from_secs(10);

pub fn smpp_config_text(dir: &Path, listener: &str, store: &str) -> String {
    format!(
        "{}[[listener]]\nname = \"smpp\"\nprotocol = \"smpp\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        super::store_table(dir, store)
    )
}

pub struct SmppRelay {
    pub running: relaylog::serve::Running,
    pub config: relaylog::config::Config,
    pub addr: SocketAddr,
    pub admin: String,
}

impl SmppRelay {
    pub async fn start(dir: &Path, listener: &str, store: &str) -> SmppRelay {
        init_keys(dir);
        let text = smpp_config_text(dir, listener, store);
        let config = relaylog::config::Config::parse(&text, Path::new("test.toml")).unwrap();
        let running = super::start_serve(config.clone(), Arc::new(relaylog::clock::SystemClock))
            .await
            .unwrap();
        let addr = running.addr("smpp").unwrap();
        let admin = format!("http://{}", running.admin.unwrap());
        SmppRelay {
            running,
            config,
            addr,
            admin,
        }
    }

    pub fn smsc(&self) -> &SmscStats {
        match &self.running.simulators[0].stats {
            SimulatorStats::Smpp(s) => s,
            _ => panic!("an SMPP listener starts the SMSC simulator"),
        }
    }
}

pub struct Esme {
    tcp: TcpStream,
    buf: BytesMut,
}

impl Esme {
    pub async fn connect(addr: SocketAddr) -> Esme {
        Self::over(TcpStream::connect(addr).await.unwrap())
    }

    /// An ESME over a connection already made.
    pub fn over(tcp: TcpStream) -> Esme {
        Esme {
            tcp,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, pdu: &[u8]) {
        self.tcp.write_all(pdu).await.unwrap();
    }

    /// The next PDU, or `None` when the relay closed the connection.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Ok(Some(len)) = frame_len(&self.buf, 1 << 20) {
                return Some(self.buf.split_to(len).to_vec());
            }
            match tokio::time::timeout(T, self.tcp.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return None,
                Err(_) => panic!("no PDU in time"),
            }
        }
    }

    /// Acknowledges a deliver_sm.
    pub async fn ack(&mut self, sequence: u32) {
        self.answer(sequence, 0).await;
    }

    /// Answers a deliver_sm with `status`.
    pub async fn answer(&mut self, sequence: u32, status: u32) {
        self.send(
            &Writer::new(id::resp(id::DELIVER_SM), status, sequence)
                .cstr(b"")
                .finish(),
        )
        .await;
    }

    pub async fn header(&mut self) -> Header {
        Header::read(&self.next().await.expect("a PDU")).unwrap()
    }

    pub async fn bind(&mut self, system_id: &[u8], password: &[u8]) -> Header {
        self.send(
            &Bind {
                system_id,
                password,
                system_type: b"",
                interface_version: 0x34,
                addr_ton: 0,
                addr_npi: 0,
                address_range: b"",
            }
            .write(id::BIND_TRANSCEIVER, 1),
        )
        .await;
        self.header().await
    }
}

pub fn submit(to: &[u8], sequence: u32) -> Vec<u8> {
    Message {
        service_type: b"",
        source: Address {
            ton: 5,
            npi: 0,
            addr: b"ACME",
        },
        dests: vec![Dest::Sme(Address {
            ton: 1,
            npi: 1,
            addr: to,
        })],
        esm_class: 0,
        registered_delivery: 1,
        data_coding: 0,
        short_message: b"canary-text-55e1",
        tlvs: Tlvs::none(),
    }
    .write(id::SUBMIT_SM, sequence)
}
