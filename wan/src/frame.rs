//! Length-prefixed frames of postcard-encoded messages, with an enforced maximum size.
//!
//! A frame is a big-endian `u32` length followed by that many bytes. The length is checked
//! against the maximum before anything is allocated, so a peer cannot make us reserve memory by
//! announcing a huge frame. Decoding errors are values, never panics.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Decode(String),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("bytes after the frame that should end the stream")]
    Trailing,
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a message for a frame body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    postcard::to_stdvec(msg).map_err(|e| FrameError::Decode(format!("cannot encode: {e}")))
}

/// Decodes a frame body; trailing bytes are an error (a frame holds exactly one message).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Decode(e.to_string())),
    }
}

/// Writes one frame, after `prefix` (e.g. a channel tag), in one write: on a QUIC stream,
/// separate small writes can leave in separate packets.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    prefix: &[u8],
    body: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    if body.len() > max {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max,
    })?;
    let mut out = Vec::with_capacity(prefix.len() + 4 + body.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly before a frame began.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(body))
}

/// Reads the one frame a stream carries, then its end. Reading to the end matters on QUIC: a
/// stream dropped before its end was read is stopped with a STOP_SENDING frame, a packet (and
/// its acknowledgement) for nothing.
pub async fn read_last_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(body) = read_frame(r, max).await? else {
        return Ok(None);
    };
    let mut more = [0u8; 1];
    match r.read(&mut more).await? {
        0 => Ok(Some(body)),
        _ => Err(FrameError::Trailing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Ping(u64),
        Note { text: String, tags: Vec<String> },
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocating() {
        let mut wire: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read_frame(&mut wire, 1024).await.expect_err("too large");
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 1024
            }
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_and_clean_end_is_none() {
        let mut wire: &[u8] = &[0, 0, 0, 10, 1, 2];
        assert!(matches!(
            read_frame(&mut wire, 1024).await,
            Err(FrameError::Truncated)
        ));
        let mut empty: &[u8] = &[];
        assert!(
            read_frame(&mut empty, 1024)
                .await
                .expect("clean end")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_last_frame_must_end_the_stream_and_its_prefix_is_written_with_it() {
        let mut out = Vec::new();
        write_frame(&mut out, &[7], &[1, 2], 16)
            .await
            .expect("write");
        assert_eq!(out, [7, 0, 0, 0, 2, 1, 2]);
        let mut wire = &out[1..];
        let body = read_last_frame(&mut wire, 16).await.expect("one frame");
        assert_eq!(body, Some(vec![1, 2]));
        out.push(9);
        let mut wire = &out[1..];
        assert!(matches!(
            read_last_frame(&mut wire, 16).await,
            Err(FrameError::Trailing)
        ));
    }

    #[tokio::test]
    async fn writer_refuses_oversized_body() {
        let mut out = Vec::new();
        let err = write_frame(&mut out, &[], &[0u8; 10], 4)
            .await
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len: 10, max: 4 }));
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_does_not_decode_as_a_message() {
        assert!(decode::<Msg>(&[0xff, 0xff, 0xff]).is_err());
        let mut ok = encode(&Msg::Ping(5)).expect("encode");
        ok.push(0);
        assert!(matches!(decode::<Msg>(&ok), Err(FrameError::Decode(_))));
    }

    proptest! {
        #[test]
        fn frames_round_trip(n in any::<u64>(), text in ".{0,64}", tags in proptest::collection::vec("[a-z]{0,8}", 0..4)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
            let msg = Msg::Note { text, tags };
            let back: (Msg, Msg) = rt.block_on(async {
                let mut wire = Vec::new();
                write_frame(&mut wire, &[], &encode(&Msg::Ping(n)).expect("e"), 1 << 20).await.expect("w");
                write_frame(&mut wire, &[], &encode(&msg).expect("e"), 1 << 20).await.expect("w");
                let mut r: &[u8] = &wire;
                let a = decode(&read_frame(&mut r, 1 << 20).await.expect("r").expect("some")).expect("d");
                let b = decode(&read_frame(&mut r, 1 << 20).await.expect("r").expect("some")).expect("d");
                (a, b)
            });
            prop_assert_eq!(back, (Msg::Ping(n), msg));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes);
        }
    }
}
