//! Newline-delimited bodies (streamed JSON lines, as live log tails send them): a body's
//! lines as they arrive, whatever its chunks.

use bytes::Bytes;
use futures::Stream;
use http_body_util::BodyExt as _;

/// The lines of `body` (without their newline), as they arrive; the last one may lack its
/// newline. A body that fails ends the stream with its error.
pub fn lines<B>(body: B) -> impl Stream<Item = Result<Bytes, String>> + Send
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    futures::stream::unfold(
        (body, Vec::<u8>::new(), false),
        |(mut body, mut pending, done)| async move {
            loop {
                if let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).take(end).collect();
                    return Some((Ok(Bytes::from(line)), (body, pending, done)));
                }
                if done {
                    return None;
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            pending.extend_from_slice(&data);
                        }
                    }
                    Some(Err(error)) => {
                        return Some((Err(error.to_string()), (body, Vec::new(), true)));
                    }
                    None if pending.is_empty() => return None,
                    None => {
                        let line = std::mem::take(&mut pending);
                        return Some((Ok(Bytes::from(line)), (body, pending, true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn lines_come_whole_whatever_the_chunks() {
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
            ["{\"a\":1}\n{\"b\"", ":2}\n", "\n", "last without newline"]
                .into_iter()
                .map(|c| Ok(http_body::Frame::data(Bytes::from(c))))
                .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        let lines: Vec<String> = lines(body)
            .map(|l| String::from_utf8(l.unwrap().to_vec()).unwrap())
            .collect()
            .await;
        assert_eq!(
            lines,
            ["{\"a\":1}", "{\"b\":2}", "", "last without newline"]
        );
    }
}
