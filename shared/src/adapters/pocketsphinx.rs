//! The offline speech engine: CMU PocketSphinx (`pocketsphinx_continuous` with its US English model, from Debian's
//! packages; `scripts/install-speech-tools` installs them), for the embedded mode and for users without Google
//! credentials. No network, no cost — and clearly lower quality: one speaker track (no diarization) and a general
//! language model, so the transcript is labelled `Quality::Low`.
//!
//! The recording is converted with SoX to what the model expects (16 kHz, mono, 16-bit WAV), then decoded with
//! word timings. Both tools run as child processes under a timeout, in a temporary directory removed afterwards.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::process::Command;

use crate::domain::transcript::{Quality, Word};
use crate::ports::{AudioRef, Recognized, Transcriber, VendorError};

pub const ENGINE: &str = "pocketsphinx/en-us";

pub struct Pocketsphinx {
    decoder: PathBuf,
    sox: PathBuf,
    /// Per recording; decoding runs at roughly 5× real time on one core here.
    timeout: Duration,
}

impl Default for Pocketsphinx {
    fn default() -> Self {
        Self {
            decoder: PathBuf::from("pocketsphinx_continuous"),
            sox: PathBuf::from("sox"),
            timeout: Duration::from_secs(900),
        }
    }
}

/// The file extension SoX needs to read a recording of this content type.
fn extension(content_type: &str) -> Option<&'static str> {
    match content_type.split(';').next().unwrap_or("").trim() {
        "audio/mpeg" | "audio/mp3" => Some("mp3"),
        "audio/wav" | "audio/x-wav" | "audio/wave" => Some("wav"),
        "audio/ogg" => Some("ogg"),
        "audio/flac" | "audio/x-flac" => Some("flac"),
        _ => None,
    }
}

/// `pocketsphinx_continuous -time yes` prints one line per token: `word start end confidence`. Markers (`<s>`,
/// `</s>`, `<sil>`), noise tokens (`[NOISE]`, `++…++`) are not words; `word(2)` is an alternative pronunciation.
pub fn parse_words(output: &str) -> Vec<Word> {
    output
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (token, start, end, conf) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || token.starts_with('<') || token.starts_with('[') || token.starts_with("++") {
                return None;
            }
            let text = token.split_once('(').map_or(token, |(w, _)| w);
            Some(Word {
                text: text.to_owned(),
                start: start.parse().ok()?,
                end: end.parse().ok()?,
                confidence: conf.parse::<f32>().ok().map(|c| c.clamp(0.0, 1.0)),
                speaker_label: None,
            })
        })
        .collect()
}

impl Pocketsphinx {
    pub fn new(decoder: PathBuf, sox: PathBuf, timeout: Duration) -> Self {
        Self { decoder, sox, timeout }
    }

    async fn run(&self, command: &mut Command, what: &str) -> Result<std::process::Output, VendorError> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let child = command.spawn().map_err(|e| {
            // Not installed is an operator's fix away: retryable, with the fix in the reason.
            VendorError::Transport(format!("{what} could not start ({e}); run scripts/install-speech-tools"))
        })?;
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => Err(VendorError::Transport(format!("{what}: {e}"))),
            Err(_) => Err(VendorError::Timeout),
        }
    }
}

#[async_trait]
impl Transcriber for Pocketsphinx {
    async fn transcribe(&self, audio: &AudioRef, data: Option<Bytes>) -> Result<Recognized, VendorError> {
        let data = data.ok_or_else(|| VendorError::Malformed("the offline engine needs the audio bytes".into()))?;
        let ext = extension(&audio.content_type)
            .ok_or_else(|| VendorError::Malformed(format!("cannot decode {} audio", audio.content_type)))?;
        let dir = tempfile::tempdir().map_err(|e| VendorError::Transport(format!("temporary directory: {e}")))?;
        let (input, wav) = (dir.path().join(format!("in.{ext}")), dir.path().join("in16k.wav"));
        tokio::fs::write(&input, &data).await.map_err(|e| VendorError::Transport(format!("writing audio: {e}")))?;

        let converted = self
            .run(
                Command::new(&self.sox)
                    .arg(&input)
                    .args(["-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer"])
                    .arg(&wav),
                "sox",
            )
            .await?;
        if !converted.status.success() {
            let why = String::from_utf8_lossy(&converted.stderr);
            return Err(VendorError::Malformed(format!("undecodable audio: {}", why.trim())));
        }
        // 16-bit mono at 16 kHz after a 44-byte header: the duration without another tool.
        let wav_bytes = tokio::fs::metadata(&wav).await.map_err(|e| VendorError::Transport(e.to_string()))?.len();
        let duration_secs = wav_bytes.saturating_sub(44) as f64 / 32_000.0;

        let decoded = self
            .run(
                Command::new(&self.decoder).arg("-infile").arg(&wav).args(["-time", "yes", "-logfn", "/dev/null"]),
                "pocketsphinx_continuous",
            )
            .await?;
        if !decoded.status.success() {
            let why = String::from_utf8_lossy(&decoded.stderr);
            return Err(VendorError::Malformed(format!("pocketsphinx failed: {}", why.trim())));
        }
        Ok(Recognized {
            engine: ENGINE.to_owned(),
            quality: Quality::Low,
            language: "en-US".to_owned(),
            duration_secs,
            words: parse_words(&String::from_utf8_lossy(&decoded.stdout)),
            billed_secs: 0.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_output_becomes_timed_words() {
        let out = "hi there\n<s> 0.000 0.020 0.998\nhi 0.030 0.310 0.5\n<sil> 0.43 0.68 0.99\n\
                   there(2) 0.69 0.82 0.42\n[NOISE] 0.9 1.0 0.1\n</s> 1.1 1.2 1.0\n";
        let words = parse_words(out);
        let got: Vec<(&str, f64)> = words.iter().map(|w| (w.text.as_str(), w.start)).collect();
        assert_eq!(got, [("hi", 0.03), ("there", 0.69)]);
        assert_eq!(words[1].confidence, Some(0.42));
    }

    #[test]
    fn only_audio_types_sox_reads_are_accepted() {
        assert_eq!(extension("audio/mpeg"), Some("mp3"));
        assert_eq!(extension("audio/wav; codecs=1"), Some("wav"));
        assert_eq!(extension("text/html"), None);
    }
}
