//! ONNX-ML operators tract does not implement, added to its operator register.
//!
//! tract 0.23 reads `TreeEnsembleClassifier`, `LinearClassifier`,
//! `LinearRegressor`, `Normalizer` and `CategoryMapper`; the exports of
//! scikit-learn (skl2onnx), XGBoost and LightGBM (onnxmltools) also use the four
//! below. Each follows the operator's definition in the ONNX-ML specification and
//! is checked against onnxruntime in the crate's tests.
//!
//! - `Scaler`: `(x - offset) * scale`, per column or for all, as `f32`;
//! - `OneHotEncoder`: strings or integers to one-hot `f32` columns; an unknown
//!   category gives zeros when `zeros = 1` (the default) and an error naming the
//!   value otherwise;
//! - `TreeEnsembleRegressor`: tract's tree evaluator with `n_targets` outputs, the
//!   `aggregate_function` and `base_values`;
//! - `TreeEnsembleClassifier` (replacing tract's, whose binary case labels every
//!   row with the first class): tract's tree evaluator, then labels and scores
//!   as onnxruntime computes them, including the one-score binary layout that
//!   scikit-learn's forests and XGBoost export (`[1 - s, s]` for positive
//!   weights, the logistic of `-s` and `s` for mixed ones);
//! - `ZipMap`: the class probabilities as they are, an `[N, classes]` tensor
//!   instead of a sequence of maps (what a tensor protocol can carry; the class
//!   order is the operator's label order).

use std::collections::HashMap;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::pb_helpers::AttrTVecType;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;
use tract_onnx_opl::ml::tree::{Cmp, TreeEnsemble, TreeEnsembleData};
use tract_onnx_opl::ml::tree_ensemble_classifier::{TreeEnsembleClassifier, parse_aggregate};

/// The operators of this module, by ONNX name.
pub(crate) const ADDED: [&str; 5] = [
    "Scaler",
    "OneHotEncoder",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "ZipMap",
];

/// Adds the operators of this module to `register`.
pub(crate) fn register(register: &mut OnnxOpRegister) {
    register.insert("Scaler", scaler);
    register.insert("OneHotEncoder", one_hot_encoder);
    register.insert("TreeEnsembleRegressor", tree_ensemble_regressor);
    // Replaces tract's: its binary case labels every row with the first class.
    register.insert("TreeEnsembleClassifier", tree_ensemble_classifier);
    register.insert("ZipMap", zip_map);
}

// ---------------------------------------------------------------------------
// Scaler

#[derive(Debug, Clone, PartialEq, Eq)]
struct Scaler {
    offset: Arc<Tensor>,
    scale: Arc<Tensor>,
}

fn scaler(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let offset: Vec<f32> = node
        .get_attr_opt_vec("offset")?
        .unwrap_or_else(|| vec![0.0]);
    let scale: Vec<f32> = node.get_attr_opt_vec("scale")?.unwrap_or_else(|| vec![1.0]);
    node.expect_attr("offset", !offset.is_empty(), "at least one value")?;
    node.expect_attr("scale", !scale.is_empty(), "at least one value")?;
    Ok((
        expand(Scaler {
            offset: rctensor1(&offset),
            scale: rctensor1(&scale),
        }),
        vec![],
    ))
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let mut x = inputs[0];
        let fact = model.outlet_fact(x)?.clone();
        ensure!(
            fact.rank() >= 1,
            "Scaler expects an input of rank 1 or more"
        );
        let columns = fact.shape[fact.rank() - 1].to_usize().ok();
        for (name, values) in [("offset", &self.offset), ("scale", &self.scale)] {
            if let Some(columns) = columns {
                ensure!(
                    values.len() == 1 || values.len() == columns,
                    "Scaler: '{name}' has {} values for {columns} columns (1 or one per column)",
                    values.len()
                );
            }
        }
        if fact.datum_type != f32::datum_type() {
            x = model.wire_node(
                format!("{prefix}.to_f32"),
                tract_onnx::tract_core::ops::cast::cast(f32::datum_type()),
                &[x],
            )?[0];
        }
        let offset = model.add_const(format!("{prefix}.offset"), self.offset.clone())?;
        let scale = model.add_const(format!("{prefix}.scale"), self.scale.clone())?;
        let centred = wire_with_rank_broadcast(
            format!("{prefix}.sub"),
            model,
            tract_onnx::tract_core::ops::math::sub(),
            &[x, offset],
        )?[0];
        wire_with_rank_broadcast(
            format!("{prefix}.mul"),
            model,
            tract_onnx::tract_core::ops::math::mul(),
            &[centred, scale],
        )
    }
}

// ---------------------------------------------------------------------------
// OneHotEncoder

/// The categories of a `OneHotEncoder`: strings or integers, in column order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Categories {
    Strings(Vec<String>),
    Ints(Vec<i64>),
}

impl Categories {
    fn len(&self) -> usize {
        match self {
            Categories::Strings(c) => c.len(),
            Categories::Ints(c) => c.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OneHotEncoder {
    categories: Categories,
    zeros: bool,
}

fn one_hot_encoder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let strings: Option<Vec<String>> = node.get_attr_opt_vec("cats_strings")?;
    let ints: Option<Vec<i64>> = node.get_attr_opt_vec("cats_int64s")?;
    let categories = match (strings, ints) {
        (Some(s), None) => Categories::Strings(s),
        (None, Some(i)) => Categories::Ints(i),
        (None, None) => node.bail("one of 'cats_strings' and 'cats_int64s' is required")?,
        (Some(_), Some(_)) => {
            node.bail("only one of 'cats_strings' and 'cats_int64s' may be set")?
        }
    };
    node.expect(categories.len() > 0, "at least one category")?;
    let zeros = node.get_attr_opt::<i64>("zeros")?.unwrap_or(1) != 0;
    Ok((expand(OneHotEncoder { categories, zeros }), vec![]))
}

impl Expansion for OneHotEncoder {
    fn name(&self) -> StaticName {
        "OneHotEncoder".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(inputs[0].rank.bex() + 1, &outputs[0].rank)?;
        let categories = self.categories.len();
        s.given(&inputs[0].shape, move |s, shape| {
            let mut out = shape.clone();
            out.push(categories.to_dim());
            s.equals(&outputs[0].shape, out)
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let op = OneHotLookup::new(&self.categories, self.zeros);
        model.wire_node(prefix, op, inputs)
    }
}

/// The typed form of `OneHotEncoder`: one lookup per element.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OneHotLookup {
    categories: Categories,
    zeros: bool,
}

impl OneHotLookup {
    fn new(categories: &Categories, zeros: bool) -> Self {
        Self {
            categories: categories.clone(),
            zeros,
        }
    }

    fn width(&self) -> usize {
        self.categories.len()
    }

    /// The column of each element (`None`: not a known category), or an error
    /// naming the first unknown value when unknown values are refused.
    fn columns(&self, input: &Tensor) -> TractResult<Vec<Option<usize>>> {
        let columns: Vec<Option<usize>> = match &self.categories {
            Categories::Strings(cats) => {
                let index: HashMap<&str, usize> = cats
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_str(), i))
                    .collect();
                let view = input.try_as_plain_ram()?;
                ensure!(
                    input.datum_type() == String::datum_type(),
                    "OneHotEncoder: string categories need a string input, got {:?}",
                    input.datum_type()
                );
                view.as_slice::<String>()?
                    .iter()
                    .map(|v| index.get(v.as_str()).copied())
                    .collect()
            }
            Categories::Ints(cats) => {
                let index: HashMap<i64, usize> =
                    cats.iter().enumerate().map(|(i, c)| (*c, i)).collect();
                ensure!(
                    input.datum_type() != String::datum_type(),
                    "OneHotEncoder: integer categories need a numeric input, got strings"
                );
                let ints = input.cast_to::<i64>()?;
                ints.try_as_plain_ram()?
                    .as_slice::<i64>()?
                    .iter()
                    .map(|v| index.get(v).copied())
                    .collect()
            }
        };
        if !self.zeros
            && let Some(at) = columns.iter().position(Option::is_none)
        {
            bail!(
                "OneHotEncoder: element {at} is not one of the {} known categories \
                 (the model sets zeros = 0, so unknown values are refused)",
                self.width()
            );
        }
        Ok(columns)
    }
}

impl Op for OneHotLookup {
    fn name(&self) -> StaticName {
        "OneHotLookup".into()
    }

    op_as_typed_op!();
}

impl EvalOp for OneHotLookup {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let width = self.width();
        let columns = self.columns(&input)?;
        let mut data = vec![0f32; columns.len() * width];
        for (row, column) in data.chunks_exact_mut(width).zip(&columns) {
            if let Some(c) = column {
                row[*c] = 1.0;
            }
        }
        let mut shape: TVec<usize> = input.shape().into();
        shape.push(width);
        let output = Tensor::from_shape(&shape, &data)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for OneHotLookup {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        shape.push(self.width().to_dim());
        Ok(tvec!(f32::fact(&*shape)))
    }

    as_op!();
}

// ---------------------------------------------------------------------------
// TreeEnsembleRegressor

#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeEnsembleRegressor {
    ensemble: TreeEnsemble,
    targets: usize,
    base_values: Option<Arc<Tensor>>,
}

fn tree_ensemble_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let targets: usize = node.get_attr("n_targets")?;
    node.expect_attr("n_targets", targets > 0, "at least one target")?;
    let post_transform: String = node
        .get_attr_opt("post_transform")?
        .unwrap_or_else(|| "NONE".to_owned());
    node.expect_attr("post_transform", post_transform == "NONE", || {
        format!("NONE (regressors export no other), got {post_transform}")
    })?;
    let aggregate: String = node
        .get_attr_opt("aggregate_function")?
        .unwrap_or_else(|| "SUM".to_owned());
    let ensemble = ensemble_of(node, "target", targets, &aggregate)?;
    let base_values = match node.get_attr_opt_vec::<f32>("base_values")? {
        Some(v) => {
            node.expect_attr("base_values", v.len() == targets, || {
                format!("one value per target ({targets}), got {}", v.len())
            })?;
            Some(tensor1(&v).into_shape(&[1, targets])?.into_arc_tensor())
        }
        None => None,
    };
    Ok((
        expand(TreeEnsembleRegressor {
            ensemble,
            targets,
            base_values,
        }),
        vec![],
    ))
}

fn node_mode(node: &NodeProto, mode: &str) -> TractResult<Option<Cmp>> {
    Ok(match mode {
        "BRANCH_LEQ" => Some(Cmp::LessEqual),
        "BRANCH_LT" => Some(Cmp::Less),
        "BRANCH_GTE" => Some(Cmp::GreaterEqual),
        "BRANCH_GT" => Some(Cmp::Greater),
        "BRANCH_EQ" => Some(Cmp::Equal),
        "BRANCH_NEQ" => Some(Cmp::NotEqual),
        "LEAF" => None,
        other => node.bail_attr("nodes_modes", &format!("unknown mode {other}"))?,
    })
}

fn attr_of_len<'a, T: AttrTVecType<'a>>(
    node: &'a NodeProto,
    name: &str,
    len: usize,
) -> TractResult<Vec<T>> {
    let values: Vec<T> = node.get_attr_vec(name)?;
    node.expect_attr(name, values.len() == len, || {
        format!("{len} values (one per entry), got {}", values.len())
    })?;
    Ok(values)
}

/// Packs the node and leaf attributes of a tree-ensemble operator into tract's
/// evaluator (`leaf` is `target` for regressors): per tree, its nodes in id
/// order, branches as `[feature, true row, false row, threshold bits, mode]`,
/// leaves as `[first weight, end weight]` rows into the weights.
fn ensemble_of(
    node: &NodeProto,
    leaf: &str,
    outputs: usize,
    aggregate: &str,
) -> TractResult<TreeEnsemble> {
    let n = node.get_attr_slice::<i64>("nodes_nodeids")?.len();
    node.expect_attr("nodes_nodeids", n > 0, "at least one node")?;
    let node_ids: Vec<usize> = attr_of_len(node, "nodes_nodeids", n)?;
    let tree_ids: Vec<usize> = attr_of_len(node, "nodes_treeids", n)?;
    let features: Vec<usize> = attr_of_len(node, "nodes_featureids", n)?;
    let true_ids: Vec<usize> = attr_of_len(node, "nodes_truenodeids", n)?;
    let false_ids: Vec<usize> = attr_of_len(node, "nodes_falsenodeids", n)?;
    let thresholds: Vec<f32> = attr_of_len(node, "nodes_values", n)?;
    let modes: Vec<Option<Cmp>> = attr_of_len::<String>(node, "nodes_modes", n)?
        .iter()
        .map(|m| node_mode(node, m))
        .collect::<TractResult<_>>()?;
    let nan_true: Vec<bool> =
        match node.get_attr_opt_vec::<i64>("nodes_missing_value_tracks_true")? {
            Some(v) => {
                node.expect_attr(
                    "nodes_missing_value_tracks_true",
                    v.len() == n,
                    "one per node",
                )?;
                v.into_iter().map(|b| b != 0).collect()
            }
            None => vec![false; n],
        };
    let leaves = node.get_attr_slice::<i64>(&format!("{leaf}_ids"))?.len();
    let leaf_nodes: Vec<usize> = attr_of_len(node, &format!("{leaf}_nodeids"), leaves)?;
    let leaf_trees: Vec<usize> = attr_of_len(node, &format!("{leaf}_treeids"), leaves)?;
    let leaf_outputs: Vec<usize> = attr_of_len(node, &format!("{leaf}_ids"), leaves)?;
    let leaf_weights: Vec<f32> = attr_of_len(node, &format!("{leaf}_weights"), leaves)?;
    if let Some(bad) = leaf_outputs.iter().find(|&&o| o >= outputs) {
        node.bail_attr(
            &format!("{leaf}_ids"),
            &format!("output {bad} of {outputs}"),
        )?;
    }

    // Trees are numbered 0..T; node ids index within their tree.
    let trees = tree_ids.iter().max().map_or(0, |m| m + 1);
    let mut per_tree: Vec<Vec<usize>> = vec![Vec::new(); trees];
    for (i, &t) in tree_ids.iter().enumerate() {
        per_tree[t].push(i);
    }
    let mut weights_of: HashMap<(usize, usize), Vec<(u32, u32)>> = HashMap::new();
    for i in 0..leaves {
        weights_of
            .entry((leaf_trees[i], leaf_nodes[i]))
            .or_default()
            .push((leaf_outputs[i] as u32, leaf_weights[i].to_bits()));
    }
    let mut roots = Vec::with_capacity(trees);
    let mut rows: Vec<u32> = Vec::with_capacity(n * 5);
    let mut weights: Vec<u32> = Vec::with_capacity(leaves * 2);
    for (tree, members) in per_tree.iter_mut().enumerate() {
        node.expect_attr("nodes_treeids", !members.is_empty(), || {
            format!("a node in tree {tree}")
        })?;
        members.sort_by_key(|&i| node_ids[i]);
        // Node ids must be 0..k within the tree: they become row offsets.
        if members.iter().enumerate().any(|(k, &i)| node_ids[i] != k) {
            node.bail_attr(
                "nodes_nodeids",
                &format!("tree {tree}: ids must be 0, 1, ... without gaps"),
            )?;
        }
        let base = (rows.len() / 5) as u32;
        roots.push(base);
        let size = members.len();
        for &i in members.iter() {
            match modes[i] {
                Some(mode) => {
                    for child in [true_ids[i], false_ids[i]] {
                        node.expect_attr("nodes_truenodeids", child < size, || {
                            format!(
                                "tree {tree}: child {child} of node {} out of range",
                                node_ids[i]
                            )
                        })?;
                    }
                    rows.extend([
                        features[i] as u32,
                        base + true_ids[i] as u32,
                        base + false_ids[i] as u32,
                        thresholds[i].to_bits(),
                        (0x0100u32 * u32::from(nan_true[i])) | mode as u32,
                    ]);
                }
                None => {
                    let start = (weights.len() / 2) as u32;
                    for (output, weight) in
                        weights_of.remove(&(tree, node_ids[i])).unwrap_or_default()
                    {
                        weights.extend([output, weight]);
                    }
                    rows.extend([start, (weights.len() / 2) as u32, 0, 0, 0]);
                }
            }
        }
    }
    if let Some(((tree, id), _)) = weights_of.into_iter().next() {
        node.bail_attr(
            &format!("{leaf}_nodeids"),
            &format!("a weight for tree {tree} node {id}, which is not a leaf"),
        )?;
    }
    let max_feature = features.iter().copied().max().unwrap_or(0);
    let data = TreeEnsembleData {
        trees: rctensor1(&roots),
        nodes: tensor1(&rows)
            .into_shape(&[rows.len() / 5, 5])?
            .into_arc_tensor(),
        leaves: tensor1(&weights)
            .into_shape(&[weights.len() / 2, 2])?
            .into_arc_tensor(),
    };
    TreeEnsemble::build(data, max_feature, outputs, parse_aggregate(aggregate)?)
}

impl Expansion for TreeEnsembleRegressor {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.targets.to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        // tract's classifier evaluator is the ensemble's raw aggregate per output.
        let mut scores = model.wire_node(
            format!("{prefix}.trees"),
            TreeEnsembleClassifier {
                ensemble: self.ensemble.clone(),
            },
            inputs,
        )?;
        if let Some(base) = &self.base_values {
            let base = model.add_const(format!("{prefix}.base"), base.clone())?;
            scores = model.wire_node(
                format!("{prefix}.base_values"),
                tract_onnx::tract_core::ops::math::add(),
                &[scores[0], base],
            )?;
        }
        Ok(scores)
    }
}

// ---------------------------------------------------------------------------
// ZipMap

#[derive(Debug, Clone, PartialEq, Eq)]
struct ZipMap {
    classes: usize,
}

fn zip_map(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ints: Option<Vec<i64>> = node.get_attr_opt_vec("classlabels_int64s")?;
    let strings: Option<Vec<String>> = node.get_attr_opt_vec("classlabels_strings")?;
    let classes = match (ints, strings) {
        (Some(i), None) => i.len(),
        (None, Some(s)) => s.len(),
        _ => {
            node.bail("exactly one of 'classlabels_int64s' and 'classlabels_strings' is required")?
        }
    };
    Ok((expand(ZipMap { classes }), vec![]))
}

impl Expansion for ZipMap {
    fn name(&self) -> StaticName {
        "ZipMap".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[0].shape[1], self.classes.to_dim())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        _prefix: &str,
        _model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        Ok(inputs.into())
    }
}

// ---------------------------------------------------------------------------
// TreeEnsembleClassifier

/// The class labels of a classifier, in score order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    fn len(&self) -> usize {
        match self {
            Labels::Ints(l) => l.len(),
            Labels::Strings(l) => l.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Labels::Ints(_) => i64::datum_type(),
            Labels::Strings(_) => String::datum_type(),
        }
    }
}

/// How scores become the probability output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Post {
    None,
    Logistic,
    Softmax,
}

/// How the trees' raw sums become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One score per class, plus the base values.
    PerClass,
    /// Two classes, every leaf weighting class 0: one score `s`; with positive
    /// weights the class is 1 when `s > 0.5` and the scores are `[1 - s, s]`,
    /// with mixed weights the class is 1 when `s > 0` and the scores are `[-s, s]`
    /// before the post transform.
    OneScore { positive: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeClassifier {
    ensemble: TreeEnsemble,
    finish: ClassScores,
}

fn tree_ensemble_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ints: Option<Vec<i64>> = node.get_attr_opt_vec("classlabels_int64s")?;
    let strings: Option<Vec<String>> = node.get_attr_opt_vec("classlabels_strings")?;
    let labels = match (ints, strings) {
        (Some(i), None) => Labels::Ints(i),
        (None, Some(s)) => Labels::Strings(s),
        _ => {
            node.bail("exactly one of 'classlabels_int64s' and 'classlabels_strings' is required")?
        }
    };
    let classes = labels.len();
    node.expect(classes >= 2, "at least two class labels")?;
    let post = match node
        .get_attr_opt::<String>("post_transform")?
        .unwrap_or_else(|| "NONE".to_owned())
        .as_str()
    {
        "NONE" => Post::None,
        "LOGISTIC" => Post::Logistic,
        "SOFTMAX" => Post::Softmax,
        other => node.bail_attr(
            "post_transform",
            &format!("{other} is not supported (NONE, LOGISTIC, SOFTMAX are)"),
        )?,
    };
    let ensemble = ensemble_of(node, "class", classes, "SUM")?;
    let class_ids: Vec<i64> = node.get_attr_vec("class_ids")?;
    let weights: Vec<f32> = node.get_attr_vec("class_weights")?;
    let base: Vec<f32> = node.get_attr_opt_vec("base_values")?.unwrap_or_default();
    let layout = if classes == 2 && class_ids.iter().all(|&c| c == 0) {
        node.expect_attr("base_values", base.len() <= 1, || {
            format!(
                "at most one value for a one-score binary classifier, got {}",
                base.len()
            )
        })?;
        Layout::OneScore {
            positive: weights.iter().all(|&w| w >= 0.0),
        }
    } else {
        node.expect_attr(
            "base_values",
            base.is_empty() || base.len() == classes,
            || format!("none or one per class ({classes}), got {}", base.len()),
        )?;
        Layout::PerClass
    };
    Ok((
        expand(TreeClassifier {
            ensemble,
            finish: ClassScores {
                labels,
                base,
                post,
                layout,
            },
        }),
        vec![],
    ))
}

impl Expansion for TreeClassifier {
    fn name(&self) -> StaticName {
        "TreeEnsembleClassifier".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, self.finish.labels.datum_type())?;
        s.equals(&outputs[1].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.finish.labels.len().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let raw = model.wire_node(
            format!("{prefix}.trees"),
            TreeEnsembleClassifier {
                ensemble: self.ensemble.clone(),
            },
            inputs,
        )?;
        model.wire_node(format!("{prefix}.scores"), self.finish.clone(), &raw)
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }
}

/// Raw per-class sums `[N, C]` to labels `[N]` and probabilities `[N, C]`.
#[derive(Debug, Clone, PartialEq)]
struct ClassScores {
    labels: Labels,
    base: Vec<f32>,
    post: Post,
    layout: Layout,
}

// Base values are finite numbers from the file; NaN never compares equal, which
// only makes two such ops unequal.
impl Eq for ClassScores {}

/// onnxruntime's logistic: symmetric, so both tails keep their precision.
fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

impl ClassScores {
    /// The class index and scores of one row of raw sums, in place.
    fn finish(&self, row: &mut [f32]) -> usize {
        match self.layout {
            Layout::OneScore { positive } => {
                let s = row[0] + self.base.first().copied().unwrap_or(0.0);
                let winner = if positive { s > 0.5 } else { s > 0.0 };
                if positive {
                    row[0] = 1.0 - s;
                    row[1] = s;
                } else if self.post == Post::Logistic {
                    row[0] = logistic(-s);
                    row[1] = logistic(s);
                } else {
                    row[0] = -s;
                    row[1] = s;
                }
                usize::from(winner)
            }
            Layout::PerClass => {
                for (score, base) in row.iter_mut().zip(&self.base) {
                    *score += base;
                }
                // The first of equal maxima, as onnxruntime picks it.
                let mut winner = 0;
                for (k, &v) in row.iter().enumerate() {
                    if v > row[winner] {
                        winner = k;
                    }
                }
                match self.post {
                    Post::None => {}
                    Post::Logistic => row.iter_mut().for_each(|v| *v = logistic(*v)),
                    Post::Softmax => {
                        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0.0;
                        for v in row.iter_mut() {
                            *v = (*v - max).exp();
                            sum += *v;
                        }
                        row.iter_mut().for_each(|v| *v /= sum);
                    }
                }
                winner
            }
        }
    }
}

impl Op for ClassScores {
    fn name(&self) -> StaticName {
        "ClassScores".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ClassScores {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let raw = args_1!(inputs);
        let classes = self.labels.len();
        ensure!(
            raw.rank() == 2 && raw.shape()[1] == classes,
            "tree scores of shape {:?} for {classes} classes",
            raw.shape()
        );
        let mut scores = raw.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let winners: Vec<usize> = scores
            .chunks_exact_mut(classes)
            .map(|row| self.finish(row))
            .collect();
        let rows = winners.len();
        let labels = match &self.labels {
            Labels::Ints(l) => tensor1(&winners.iter().map(|&w| l[w]).collect::<Vec<i64>>()),
            Labels::Strings(l) => {
                let names: Vec<String> = winners.iter().map(|&w| l[w].clone()).collect();
                Tensor::from(tract_onnx::prelude::tract_ndarray::Array1::from(names))
            }
        };
        let scores = Tensor::from_shape(&[rows, classes], &scores)?;
        Ok(tvec!(labels.into_tvalue(), scores.into_tvalue()))
    }
}

impl TypedOp for ClassScores {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = inputs[0].shape[0].clone();
        Ok(tvec!(
            self.labels.datum_type().fact(std::slice::from_ref(&rows)),
            f32::fact(&[rows, self.labels.len().to_dim()])
        ))
    }

    as_op!();
}
