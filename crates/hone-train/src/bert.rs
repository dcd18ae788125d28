//! A BERT-family encoder built from tch primitives.
//!
//! Variables are created under the names the Hugging Face checkpoints use
//! (`embeddings.word_embeddings.weight`, `encoder.layer.3.attention.self.query.bias`, …),
//! so a checkpoint loads by name and a saved fine-tuned model reads back the same way.
//! Every forward op is the fallible (`f_`) variant: a CUDA out-of-memory or a shape bug
//! becomes a [`TrainError`] for the job instead of a panic on the training thread.
//!
//! The blocks take an explicit `train` flag rather than implementing `nn::ModuleT`,
//! whose `forward_t` cannot return an error and takes a single tensor.
//!
//! Attention goes through `scaled_dot_product_attention`, which picks libtorch's fused
//! kernels (flash / memory-efficient on CUDA, the flash CPU kernel on CPU) — the same
//! path transformers takes with `attn_implementation="sdpa"`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, TchError, Tensor};

use crate::error::TrainError;
use crate::layers::{dims, dropout, mean_pool, Linear, WeightInit, NO_DECAY_GROUP};
use crate::model_dir::{CONFIG_FILE, WEIGHTS_FILE};

/// The model families whose checkpoints this module loads.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["bert"];

/// The activation of the feed-forward block, as config.json's `hidden_act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU (erf), transformers' `"gelu"`.
    #[serde(rename = "gelu", alias = "gelu_python")]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(
        rename = "gelu_new",
        alias = "gelu_pytorch_tanh",
        alias = "gelu_fast",
        alias = "gelu_tanh"
    )]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl HiddenAct {
    fn forward(self, xs: &Tensor) -> Result<Tensor, TchError> {
        match self {
            Self::Gelu => xs.f_gelu("none"),
            Self::GeluTanh => xs.f_gelu("tanh"),
            Self::Relu => xs.f_relu(),
            Self::Silu => xs.f_silu(),
        }
    }
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_hidden_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}

/// The subset of a Hugging Face `config.json` that defines a BERT encoder. Defaults
/// are transformers' `BertConfig` defaults, so sparse configs read the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: HiddenAct,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Row of the word embeddings used for padding (no gradient flows into it).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Dropout before a classification head; `hidden_dropout_prob` when absent, as in
    /// transformers.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

impl BertConfig {
    /// Reads and checks a config.json. Unknown keys are ignored (checkpoints carry
    /// many); a model family this module does not implement is refused by name.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let raw: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::config(path, format!("not valid JSON: {e}")))?;
        let model_type = raw
            .get("model_type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("bert")
            .to_owned();
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(TrainError::UnsupportedArchitecture {
                message: format!(
                    "{} declares model_type {model_type:?}; hone implements {}",
                    path.display(),
                    SUPPORTED_MODEL_TYPES.join(", ")
                ),
                architecture: model_type,
            });
        }
        let config: Self = serde_json::from_value(raw)
            .map_err(|e| TrainError::config(path, format!("not a BERT config: {e}")))?;
        config
            .validate()
            .map_err(|message| TrainError::config(path, message))?;
        Ok(config)
    }

    /// Checks the sizes the forward pass relies on.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not implemented (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.classifier_dropout.unwrap_or(0.0)),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} {p} is not in [0, 1)"));
            }
        }
        if let Some(pad) = self.pad_token_id {
            if pad < 0 || pad as usize >= self.vocab_size {
                return Err(format!("pad_token_id {pad} is outside the vocabulary"));
            }
        }
        Ok(())
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

impl WeightInit {
    /// Random with the config's `initializer_range`.
    pub fn random(config: &BertConfig) -> Self {
        Self::Random {
            std: config.initializer_range,
        }
    }
}

/// LayerNorm over the last dimension; named `LayerNorm.{weight,bias}` in checkpoints.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    fn new(vs: &nn::Path, dim: usize, eps: f64) -> Result<Self, TchError> {
        let vs = vs.set_group(NO_DECAY_GROUP);
        Ok(Self {
            weight: vs.f_ones("weight", &[dim as i64])?,
            bias: vs.f_zeros("bias", &[dim as i64])?,
            dim: dim as i64,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        xs.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// Word + position + token-type embeddings, then LayerNorm and dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    layer_norm: LayerNorm,
    padding_idx: i64,
    dropout: f64,
}

impl BertEmbeddings {
    fn new(vs: &nn::Path, config: &BertConfig, init: WeightInit) -> Result<Self, TchError> {
        let h = config.hidden_size;
        let word_embeddings = vs.sub("word_embeddings").f_var(
            "weight",
            &dims(&[config.vocab_size, h]),
            init.init(),
        )?;
        let padding_idx = config.pad_token_id.unwrap_or(-1);
        if padding_idx >= 0 && init != WeightInit::Zeros {
            // transformers zeroes the padding row at initialisation.
            tch::no_grad(|| word_embeddings.f_get(padding_idx)?.f_zero_().map(drop))?;
        }
        Ok(Self {
            word_embeddings,
            position_embeddings: vs.sub("position_embeddings").f_var(
                "weight",
                &dims(&[config.max_position_embeddings, h]),
                init.init(),
            )?,
            token_type_embeddings: vs.sub("token_type_embeddings").f_var(
                "weight",
                &dims(&[config.type_vocab_size, h]),
                init.init(),
            )?,
            layer_norm: LayerNorm::new(&vs.sub("LayerNorm"), h, config.layer_norm_eps)?,
            padding_idx,
            dropout: config.hidden_dropout_prob,
        })
    }

    /// `input_ids` `[batch, seq]` → `[batch, seq, hidden]`. Without `token_type_ids`
    /// every token is of type 0, added as one broadcast row instead of a lookup.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, TchError> {
        let seq_len = input_ids.size2()?.1;
        let words = Tensor::f_embedding(
            &self.word_embeddings,
            input_ids,
            self.padding_idx,
            false,
            false,
        )?;
        let positions = self.position_embeddings.f_narrow(0, 0, seq_len)?;
        let types = match token_type_ids {
            Some(ids) => Tensor::f_embedding(&self.token_type_embeddings, ids, -1, false, false)?,
            None => self.token_type_embeddings.f_narrow(0, 0, 1)?,
        };
        let xs = words.f_add(&positions)?.f_add(&types)?;
        dropout(self.layer_norm.forward(&xs)?, self.dropout, train)
    }
}

/// Multi-head self-attention (`attention.self`) followed by its output projection and
/// residual LayerNorm (`attention.output`).
#[derive(Debug)]
pub struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    num_heads: i64,
    head_dim: i64,
    attention_dropout: f64,
    hidden_dropout: f64,
}

impl BertAttention {
    fn quantize_int8(&mut self) -> Result<(), TchError> {
        for linear in [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.output,
        ] {
            linear.quantize_int8()?;
        }
        Ok(())
    }

    fn new(vs: &nn::Path, config: &BertConfig, init: WeightInit) -> Result<Self, TchError> {
        let h = config.hidden_size;
        let this = vs.sub("self");
        let out = vs.sub("output");
        Ok(Self {
            query: Linear::new(&this.sub("query"), h, h, init)?,
            key: Linear::new(&this.sub("key"), h, h, init)?,
            value: Linear::new(&this.sub("value"), h, h, init)?,
            output: Linear::new(&out.sub("dense"), h, h, init)?,
            layer_norm: LayerNorm::new(&out.sub("LayerNorm"), h, config.layer_norm_eps)?,
            num_heads: config.num_attention_heads as i64,
            head_dim: config.head_dim() as i64,
            attention_dropout: config.attention_probs_dropout_prob,
            hidden_dropout: config.hidden_dropout_prob,
        })
    }

    /// `mask` is additive, broadcastable to `[batch, heads, seq, seq]`; `None` when no
    /// token of the batch is padding, which lets libtorch pick its fastest kernel.
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor, TchError> {
        let (batch, seq_len, hidden) = xs.size3()?;
        let heads = |t: Tensor| {
            t.f_view([batch, seq_len, self.num_heads, self.head_dim])?
                .f_transpose(1, 2)
        };
        let q = heads(self.query.forward(xs)?)?;
        let k = heads(self.key.forward(xs)?)?;
        let v = heads(self.value.forward(xs)?)?;
        let p = if train { self.attention_dropout } else { 0.0 };
        let context =
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask, p, false, None, false)?
                .f_transpose(1, 2)?
                .f_reshape([batch, seq_len, hidden])?;
        let projected = dropout(self.output.forward(&context)?, self.hidden_dropout, train)?;
        self.layer_norm.forward(&projected.f_add(xs)?)
    }
}

/// One transformer block: attention, then the feed-forward network
/// (`intermediate.dense` → activation → `output.dense`) with its residual LayerNorm.
#[derive(Debug)]
pub struct BertLayer {
    attention: BertAttention,
    intermediate: Linear,
    activation: HiddenAct,
    output: Linear,
    layer_norm: LayerNorm,
    hidden_dropout: f64,
}

impl BertLayer {
    fn quantize_int8(&mut self) -> Result<(), TchError> {
        self.attention.quantize_int8()?;
        self.intermediate.quantize_int8()?;
        self.output.quantize_int8()
    }

    fn new(vs: &nn::Path, config: &BertConfig, init: WeightInit) -> Result<Self, TchError> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        Ok(Self {
            attention: BertAttention::new(&vs.sub("attention"), config, init)?,
            intermediate: Linear::new(&vs.sub("intermediate").sub("dense"), h, i, init)?,
            activation: config.hidden_act,
            output: Linear::new(&vs.sub("output").sub("dense"), i, h, init)?,
            layer_norm: LayerNorm::new(
                &vs.sub("output").sub("LayerNorm"),
                h,
                config.layer_norm_eps,
            )?,
            hidden_dropout: config.hidden_dropout_prob,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor, TchError> {
        let attended = self.attention.forward(xs, mask, train)?;
        let inner = self
            .activation
            .forward(&self.intermediate.forward(&attended)?)?;
        let out = dropout(self.output.forward(&inner)?, self.hidden_dropout, train)?;
        self.layer_norm.forward(&out.f_add(&attended)?)
    }
}

/// The encoder: embeddings and `num_hidden_layers` blocks; the pooler of the
/// checkpoint (if any) is not built, hone pools by mean.
#[derive(Debug)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    config: BertConfig,
}

impl BertModel {
    /// Creates the variables under `vs`, initialised as `init` says; load a
    /// checkpoint over them with [`crate::weights::load_safetensors`].
    pub fn new(vs: &nn::Path, config: &BertConfig, init: WeightInit) -> Result<Self, TrainError> {
        config
            .validate()
            .map_err(|m| TrainError::InvalidInput(format!("BERT config: {m}")))?;
        let embeddings = BertEmbeddings::new(&vs.sub("embeddings"), config, init)?;
        let layer_vs = vs.sub("encoder").sub("layer");
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::new(&layer_vs.sub(i), config, init))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            embeddings,
            layers,
            config: config.clone(),
        })
    }

    /// Loads the encoder of a Hugging Face BERT directory (config.json +
    /// model.safetensors) for inference, e.g. to compare it with transformers.
    pub fn load(dir: &Path, device: Device) -> Result<Self, TrainError> {
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs.root(), &config, WeightInit::Zeros)?;
        let weights = dir.join(WEIGHTS_FILE);
        crate::weights::load_safetensors(&vs, &weights, &|_| false)?;
        // The model holds its own handles on the variables; the store can go.
        Ok(model)
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Computes every Linear layer of the encoder (attention projections and
    /// feed-forward, about 99 % of its FLOPs) in int8 from now on: CPU inference only
    /// (see `int8.rs`). Embeddings and layer norms stay fp32.
    pub fn quantize_int8(&mut self) -> Result<(), TrainError> {
        for layer in &mut self.layers {
            layer.quantize_int8()?;
        }
        Ok(())
    }

    /// Last hidden states `[batch, seq, hidden]`.
    ///
    /// `input_ids` and `attention_mask` are `[batch, seq]` (i64, mask 1 for real tokens,
    /// 0 for padding); `token_type_ids` may be omitted for single-segment inputs.
    /// `train` enables dropout; callers run inference under `tch::no_grad`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        let xs = self.embed(input_ids, token_type_ids, train)?;
        self.forward_layers(xs, attention_mask, 0..self.layers.len(), train)
    }

    fn embed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        let seq_len = input_ids.size2()?.1;
        if seq_len as usize > self.config.max_position_embeddings {
            return Err(TrainError::InvalidInput(format!(
                "sequence of {seq_len} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        Ok(self.embeddings.forward(input_ids, token_type_ids, train)?)
    }

    /// The hidden states after the embeddings and the first `layers` blocks
    /// `[batch, seq, hidden]`, as [`forward`](Self::forward) computes them; what
    /// [`forward_from`](Self::forward_from) goes on from. `layers` is at most the
    /// encoder's depth.
    pub fn forward_until(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        layers: usize,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        self.check_depth(layers)?;
        let xs = self.embed(input_ids, token_type_ids, train)?;
        self.forward_layers(xs, attention_mask, 0..layers, train)
    }

    /// Last hidden states from the hidden states `hidden` after the first `layer`
    /// blocks (see [`forward_until`](Self::forward_until)): the remaining blocks.
    pub fn forward_from(
        &self,
        hidden: Tensor,
        attention_mask: &Tensor,
        layer: usize,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        self.check_depth(layer)?;
        self.forward_layers(hidden, attention_mask, layer..self.layers.len(), train)
    }

    fn check_depth(&self, layers: usize) -> Result<(), TrainError> {
        if layers > self.layers.len() {
            return Err(TrainError::InvalidInput(format!(
                "the encoder has {} layers, not {layers}",
                self.layers.len()
            )));
        }
        Ok(())
    }

    fn forward_layers(
        &self,
        mut xs: Tensor,
        attention_mask: &Tensor,
        layers: std::ops::Range<usize>,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        let mask = additive_mask(attention_mask, xs.kind())?;
        for layer in &self.layers[layers] {
            xs = layer.forward(&xs, mask.as_ref(), train)?;
        }
        Ok(xs)
    }

    /// Sentence embeddings as sentence-transformers computes them for this model:
    /// mean of the last hidden states over the real tokens. Runs in eval mode under
    /// `no_grad`; used to check the port against the reference implementation.
    pub fn mean_pooled(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor, TrainError> {
        tch::no_grad(|| {
            let hidden = self.forward(input_ids, attention_mask, None, false)?;
            Ok(mean_pool(&hidden, attention_mask)?)
        })
    }
}

/// `[batch, seq]` 0/1 mask → additive `[batch, 1, 1, seq]` (0 to attend, the kind's
/// lowest value to ignore), or `None` when nothing is padding.
fn additive_mask(attention_mask: &Tensor, kind: Kind) -> Result<Option<Tensor>, TchError> {
    let all_real = attention_mask.f_min()?.f_int64_value(&[])? != 0;
    if all_real {
        return Ok(None);
    }
    let lowest = match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.38e38,
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    };
    let (batch, seq_len) = attention_mask.size2()?;
    let padding = attention_mask.f_eq(0)?;
    Ok(Some(
        Tensor::f_zeros([batch, 1, 1, seq_len], (kind, attention_mask.device()))?
            .f_masked_fill(&padding.f_view([batch, 1, 1, seq_len])?, lowest)?,
    ))
}

/// 0 for the embeddings, `i + 1` for encoder layer `i`, `layers + 1` for the rest (the
/// head): the order in which features get more specific to the pretraining task.
pub fn layer_depth(name: &str, layers: usize) -> usize {
    if name.starts_with("embeddings.") {
        return 0;
    }
    name.strip_prefix("encoder.layer.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .map_or(layers + 1, |i| i + 1)
}
