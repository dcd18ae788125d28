//! Resource identifiers with a type prefix, as the OpenAI API uses them, so that an id
//! pasted into the wrong endpoint is recognised as such instead of looked up.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new id; UUIDv7 keeps ids roughly ordered by creation time.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, Uuid::now_v7().simple()))
            }

            /// Accepts only ids this server could have issued.
            pub fn parse(raw: &str) -> Option<Self> {
                let rest = raw.strip_prefix($prefix)?;
                (rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's last sixteen characters, for model names: in a UUIDv7 they
            /// hold 62 random bits (the rest is the clock and the variant), so a
            /// name made from them cannot be guessed and practically never repeats.
            pub fn short(&self) -> &str {
                &self.0[self.0.len() - 16..]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(FileId, "file-", "An uploaded file, `file-<32 hex>`.");
prefixed_id!(JobId, "ftjob-", "A fine-tuning job, `ftjob-<32 hex>`.");
prefixed_id!(ProjectId, "proj-", "A project (tenant), `proj-<32 hex>`.");
prefixed_id!(
    ApiKeyId,
    "key-",
    "An API key's public id, `key-<32 hex>`, for lists and revocation."
);
prefixed_id!(WebhookId, "wh-", "A webhook endpoint, `wh-<32 hex>`.");
prefixed_id!(
    WebhookEventId,
    "evt-",
    "A webhook event, `evt-<32 hex>`: the body's `id` and the `webhook-id` header \
     (the migration's triggers make them in SQL, of the same shape)."
);
prefixed_id!(
    WebhookDeliveryId,
    "whdel-",
    "One event's delivery to one endpoint, `whdel-<32 hex>`."
);

/// A fine-tuned model: `ft:<base model>:<suffix>:<job short id>`, or without the
/// suffix part when the job had none. The short id is the job id's random part
/// ([`JobId::short`]), so model ids cannot be guessed; the store refuses to record a
/// job's success under an id another model holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(String);

impl ModelId {
    pub fn for_job(base_model: &str, suffix: Option<&str>, job: &JobId) -> Self {
        match suffix {
            Some(s) => Self(format!("ft:{base_model}:{s}:{}", job.short())),
            None => Self(format!("ft:{base_model}:{}", job.short())),
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        (raw.starts_with("ft:") && raw.len() <= 256).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's checkpoint of one epoch: `ftckpt-<the job's 32 hex>-<epoch>`, as OpenAI's
/// `ftckpt-` ids; made from the job and the epoch, which are what identify it, so it
/// needs no column of its own and a cursor says which epoch it stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckpointId {
    pub job: JobId,
    pub epoch: u32,
}

impl CheckpointId {
    pub const PREFIX: &'static str = "ftckpt-";

    pub fn parse(raw: &str) -> Option<Self> {
        let (hex, epoch) = raw.strip_prefix(Self::PREFIX)?.split_once('-')?;
        let job = JobId::parse(&format!("{}{hex}", JobId::PREFIX))?;
        let epoch = epoch
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| epoch.parse().ok())??;
        Some(Self { job, epoch })
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = &self.job.as_str()[JobId::PREFIX.len()..];
        write!(f, "{}{hex}-{}", Self::PREFIX, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_ids_name_their_job_and_epoch() {
        let job = JobId::generate();
        let id = CheckpointId {
            job: job.clone(),
            epoch: 12,
        };
        let text = id.to_string();
        assert!(text.starts_with("ftckpt-"), "{text}");
        assert_eq!(CheckpointId::parse(&text), Some(id));
        for bad in [
            "ftckpt-",
            "ftckpt-12",
            &format!("ftckpt-{}", &job.as_str()[6..]),
            &format!("ftckpt-{}-", &job.as_str()[6..]),
            &format!("ftckpt-{}-+1", &job.as_str()[6..]),
            &format!("ftckpt-{}-99999999999", &job.as_str()[6..]),
            &format!("ftjob-{}-1", &job.as_str()[6..]),
        ] {
            assert_eq!(CheckpointId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_ids_parse_back_and_foreign_ones_do_not() {
        let id = FileId::generate();
        assert_eq!(FileId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(JobId::parse(id.as_str()), None);
        assert_eq!(FileId::parse("file-xyz"), None);
        assert_eq!(FileId::parse("file-0123456789abcdef0123456789abcdeg"), None);
    }

    #[test]
    fn model_ids_name_base_suffix_and_job() {
        let job = JobId::parse("ftjob-0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(
            ModelId::for_job("all-MiniLM-L6-v2", Some("reviews"), &job).as_str(),
            "ft:all-MiniLM-L6-v2:reviews:0123456789abcdef"
        );
        assert_eq!(
            ModelId::for_job("m", None, &job).as_str(),
            "ft:m:0123456789abcdef"
        );
    }
}
