//! The WebSocket transports: Kubernetes' channel protocol (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`) for exec and attach, and the byte tunnel that carries SPDY for
//! port-forward (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and later).
//!
//! Channel protocol: every message is one byte naming a channel, then data: 0 stdin (client
//! to server), 1 stdout, 2 stderr, 3 the final `Status`, 4 terminal resize; v5 adds 255, the
//! client closing a channel (`[255, 0]`: end of stdin).

use std::future::Future;

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::job::{self, ERROR, In, Outcome, Output, QUEUE, RESIZE, STDIN};

const CLOSE: u8 = 255;

/// Runs `job` with the socket as its channels, then sends the final status and a normal
/// close (a client reads the status stream to its end: it needs the close to be normal).
pub async fn channels<F, Fut>(socket: WebSocket, v5: bool, command: Vec<String>, job: F)
where
    F: FnOnce(Output, mpsc::Receiver<In>) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<In>(QUEUE);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some(&chan) = data.first() else { continue };
            let ev = match chan {
                STDIN => In::Stdin(data.slice(1..)),
                RESIZE => In::Resize(data.slice(1..)),
                CLOSE if v5 && data.get(1) == Some(&STDIN) => In::StdinEnd,
                _ => continue,
            };
            if in_tx.send(ev).await.is_err() {
                break;
            }
        }
        // Dropping the sender tells the job its client is gone.
    });
    let task = tokio::spawn(job(out_tx, in_rx));
    let mut client_gone = false;
    while let Some((chan, data)) = out_rx.recv().await {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(chan);
        m.extend_from_slice(&data);
        if sink.send(Message::Binary(Bytes::from(m))).await.is_err() {
            client_gone = true;
            break;
        }
    }
    drop(out_rx);
    let outcome = task.await.unwrap_or(Ok(None));
    if !client_gone {
        let mut m = vec![ERROR];
        m.extend_from_slice(&job::status(&outcome, &command));
        let _ = sink.send(Message::Binary(Bytes::from(m))).await;
        let _ = sink.send(Message::Close(Some(CloseFrame { code: close_code::NORMAL, reason: "".into() }))).await;
    }
    reader.abort();
}

/// The socket as a byte stream (each binary message is a piece of it), for SPDY tunnelled
/// through a WebSocket.
pub fn bytes(socket: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut stream) = socket.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(Some(CloseFrame { code: close_code::NORMAL, reason: "".into() }))).await;
    });
    theirs
}
