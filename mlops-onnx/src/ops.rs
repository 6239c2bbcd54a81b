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
//! - `TreeEnsembleRegressor`: a tree evaluator of ours (tract's walks its leaf
//!   table from the start for every tree, 30-50x slower than onnxruntime) with
//!   `n_targets` outputs, the `aggregate_function` and `base_values`;
//! - `TreeEnsembleClassifier` (replacing tract's, whose binary case labels every
//!   row with the first class): the same evaluator, then labels and scores
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

/// The typed form of `OneHotEncoder`: one lookup per element, in an index
/// built once when the graph is prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OneHotLookup {
    index: CategoryIndex,
    width: usize,
    zeros: bool,
}

/// The column of each category.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CategoryIndex {
    Strings(HashMap<String, usize>),
    Ints(HashMap<i64, usize>),
}

impl OneHotLookup {
    fn new(categories: &Categories, zeros: bool) -> Self {
        let index = match categories {
            Categories::Strings(cats) => CategoryIndex::Strings(
                cats.iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), i))
                    .collect(),
            ),
            Categories::Ints(cats) => {
                CategoryIndex::Ints(cats.iter().enumerate().map(|(i, c)| (*c, i)).collect())
            }
        };
        Self {
            index,
            width: categories.len(),
            zeros,
        }
    }

    fn width(&self) -> usize {
        self.width
    }

    /// The column of each element (`None`: not a known category), or an error
    /// naming the first unknown value when unknown values are refused.
    fn columns(&self, input: &Tensor) -> TractResult<Vec<Option<usize>>> {
        let columns: Vec<Option<usize>> = match &self.index {
            CategoryIndex::Strings(index) => {
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
            CategoryIndex::Ints(index) => {
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
    ensemble: Arc<Forest>,
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
    let ensemble = Arc::new(ensemble_of(node, "target", targets, &aggregate)?);
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

fn node_mode(node: &NodeProto, mode: &str) -> TractResult<Mode> {
    Ok(match mode {
        "BRANCH_LEQ" => Mode::Leq,
        "BRANCH_LT" => Mode::Lt,
        "BRANCH_GTE" => Mode::Gte,
        "BRANCH_GT" => Mode::Gt,
        "BRANCH_EQ" => Mode::Eq,
        "BRANCH_NEQ" => Mode::Neq,
        "LEAF" => Mode::Leaf,
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

/// Reads the node and leaf attributes of a tree-ensemble operator (`leaf` is
/// `target` for regressors, `class` for classifiers) into a [`Forest`]: per
/// tree, its nodes in id order with absolute child indices, each leaf holding
/// the range of its weights.
fn ensemble_of(
    node: &NodeProto,
    leaf: &str,
    outputs: usize,
    aggregate: &str,
) -> TractResult<Forest> {
    let aggregate = match aggregate {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => node.bail_attr("aggregate_function", &format!("unknown function {other}"))?,
    };
    let n = node.get_attr_slice::<i64>("nodes_nodeids")?.len();
    node.expect_attr("nodes_nodeids", n > 0, "at least one node")?;
    let node_ids: Vec<usize> = attr_of_len(node, "nodes_nodeids", n)?;
    let tree_ids: Vec<usize> = attr_of_len(node, "nodes_treeids", n)?;
    let features: Vec<usize> = attr_of_len(node, "nodes_featureids", n)?;
    let true_ids: Vec<usize> = attr_of_len(node, "nodes_truenodeids", n)?;
    let false_ids: Vec<usize> = attr_of_len(node, "nodes_falsenodeids", n)?;
    let thresholds: Vec<f32> = attr_of_len(node, "nodes_values", n)?;
    let modes: Vec<Mode> = attr_of_len::<String>(node, "nodes_modes", n)?
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
    let too_big = |what: &str| format!("{what} beyond 2^32 entries");
    let index = |v: usize, what: &str| -> TractResult<u32> {
        u32::try_from(v).map_err(|_| format_err!("{}", too_big(what)))
    };

    // Trees are numbered 0..T; node ids index within their tree.
    let trees = tree_ids.iter().max().map_or(0, |m| m + 1);
    let mut per_tree: Vec<Vec<usize>> = vec![Vec::new(); trees];
    for (i, &t) in tree_ids.iter().enumerate() {
        per_tree[t].push(i);
    }
    let mut weights_of: HashMap<(usize, usize), Vec<(u32, f32)>> = HashMap::new();
    for i in 0..leaves {
        weights_of
            .entry((leaf_trees[i], leaf_nodes[i]))
            .or_default()
            .push((index(leaf_outputs[i], "outputs")?, leaf_weights[i]));
    }
    let mut forest = Forest {
        roots: Vec::with_capacity(trees),
        nodes: Vec::with_capacity(n),
        weights: Vec::with_capacity(leaves),
        outputs,
        features: features.iter().copied().max().map_or(0, |m| m + 1),
        aggregate,
    };
    for (tree, members) in per_tree.iter_mut().enumerate() {
        node.expect_attr("nodes_treeids", !members.is_empty(), || {
            format!("a node in tree {tree}")
        })?;
        members.sort_by_key(|&i| node_ids[i]);
        // Node ids must be 0..k within the tree: they become offsets.
        if members.iter().enumerate().any(|(k, &i)| node_ids[i] != k) {
            node.bail_attr(
                "nodes_nodeids",
                &format!("tree {tree}: ids must be 0, 1, ... without gaps"),
            )?;
        }
        let base = index(forest.nodes.len(), "nodes")?;
        forest.roots.push(base);
        let size = members.len();
        for &i in members.iter() {
            let (a, b) = match modes[i] {
                Mode::Leaf => {
                    let start = index(forest.weights.len(), "weights")?;
                    forest
                        .weights
                        .extend(weights_of.remove(&(tree, node_ids[i])).unwrap_or_default());
                    (start, index(forest.weights.len(), "weights")?)
                }
                _ => {
                    for child in [true_ids[i], false_ids[i]] {
                        node.expect_attr("nodes_truenodeids", child < size, || {
                            format!(
                                "tree {tree}: child {child} of node {} out of range",
                                node_ids[i]
                            )
                        })?;
                    }
                    (
                        base + index(true_ids[i], "nodes")?,
                        base + index(false_ids[i], "nodes")?,
                    )
                }
            };
            forest.nodes.push(TreeNode {
                feature: index(features[i], "features")?,
                threshold: thresholds[i],
                a,
                b,
                mode: modes[i],
                nan_true: nan_true[i],
            });
        }
    }
    if let Some(((tree, id), _)) = weights_of.into_iter().next() {
        node.bail_attr(
            &format!("{leaf}_nodeids"),
            &format!("a weight for tree {tree} node {id}, which is not a leaf"),
        )?;
    }
    Ok(forest)
}

/// How a tree node compares its feature with its threshold (`Leaf`: it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Leaf,
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

/// How the trees' weights for one output combine (onnxruntime's rules:
/// `AVERAGE` divides the sum by the number of trees; `MIN` and `MAX` over the
/// weights reached, 0 when none is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// One node: a branch to `a` (true) or `b` (false), or a leaf whose weights
/// are `weights[a..b]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TreeNode {
    feature: u32,
    threshold: f32,
    a: u32,
    b: u32,
    mode: Mode,
    nan_true: bool,
}

/// A tree ensemble laid out for evaluation: every tree's nodes in one array.
///
/// Written here rather than taken from tract: tract 0.23's evaluator walks its
/// leaf table from the start for every tree it visits (200 µs for one row of a
/// 30-tree forest); this one visits only the nodes on each row's paths.
#[derive(Debug, Clone, PartialEq)]
struct Forest {
    roots: Vec<u32>,
    nodes: Vec<TreeNode>,
    /// `(output, weight)` of every leaf, leaf by leaf.
    weights: Vec<(u32, f32)>,
    outputs: usize,
    /// One more than the highest feature a node reads.
    features: usize,
    aggregate: Aggregate,
}

// Thresholds and weights come from the file and are compared as written; a NaN
// among them only makes two such ops unequal.
impl Eq for Forest {}

impl Forest {
    /// The leaf row `x` reaches from node `at`.
    fn leaf(&self, mut at: usize, x: &[f32]) -> &TreeNode {
        loop {
            let n = &self.nodes[at];
            if n.mode == Mode::Leaf {
                return n;
            }
            let v = x[n.feature as usize];
            let go_true = if v.is_nan() && n.nan_true {
                true
            } else {
                match n.mode {
                    Mode::Leaf => return n,
                    Mode::Leq => v <= n.threshold,
                    Mode::Lt => v < n.threshold,
                    Mode::Gte => v >= n.threshold,
                    Mode::Gt => v > n.threshold,
                    Mode::Eq => v == n.threshold,
                    Mode::Neq => v != n.threshold,
                }
            };
            at = if go_true { n.a } else { n.b } as usize;
        }
    }

    /// The aggregated weights of `rows` rows of `width` features, `[rows, outputs]`.
    fn eval(&self, x: &[f32], rows: usize, width: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.outputs];
        let mut seen = vec![false; self.outputs];
        for (row, scores) in x
            .chunks_exact(width.max(1))
            .take(rows)
            .zip(out.chunks_exact_mut(self.outputs.max(1)))
        {
            seen.iter_mut().for_each(|s| *s = false);
            for &root in &self.roots {
                let leaf = self.leaf(root as usize, row);
                for &(output, weight) in &self.weights[leaf.a as usize..leaf.b as usize] {
                    let (score, seen) = (&mut scores[output as usize], &mut seen[output as usize]);
                    match self.aggregate {
                        Aggregate::Sum | Aggregate::Average => *score += weight,
                        Aggregate::Min => *score = if *seen { score.min(weight) } else { weight },
                        Aggregate::Max => *score = if *seen { score.max(weight) } else { weight },
                    }
                    *seen = true;
                }
            }
            if self.aggregate == Aggregate::Average && !self.roots.is_empty() {
                let trees = self.roots.len() as f32;
                scores.iter_mut().for_each(|s| *s /= trees);
            }
        }
        out
    }
}

/// The typed form of a tree ensemble: `[N, F]` features to `[N, outputs]`
/// aggregated weights (before base values and post transforms).
#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeScores {
    forest: Arc<Forest>,
}

impl Op for TreeScores {
    fn name(&self) -> StaticName {
        "TreeScores".into()
    }

    op_as_typed_op!();
}

impl EvalOp for TreeScores {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.rank() == 2,
            "a tree ensemble reads a [rows, features] input, got shape {:?}",
            input.shape()
        );
        let (rows, width) = (input.shape()[0], input.shape()[1]);
        ensure!(
            width >= self.forest.features.max(1),
            "the trees read feature {} of an input of {width} features",
            self.forest.features.saturating_sub(1)
        );
        let x = input.cast_to::<f32>()?;
        let x = x.try_as_plain_ram()?;
        let scores = self.forest.eval(x.as_slice::<f32>()?, rows, width);
        Ok(tvec!(
            Tensor::from_shape(&[rows, self.forest.outputs], &scores)?.into_tvalue()
        ))
    }
}

impl TypedOp for TreeScores {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact(&[rows, self.forest.outputs.to_dim()])))
    }

    as_op!();
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
            TreeScores {
                forest: self.ensemble.clone(),
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
    ensemble: Arc<Forest>,
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
    let ensemble = Arc::new(ensemble_of(node, "class", classes, "SUM")?);
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
            TreeScores {
                forest: self.ensemble.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two stumps on feature 0 (`x <= 1` in the first, `x != 2` in the
    /// second, which sends NaN to its true branch when `nan_true`), weighting
    /// output 0 or 1.
    fn stumps(aggregate: Aggregate, nan_true: bool) -> Forest {
        let branch = |a, b, mode, nan_true| TreeNode {
            feature: 0,
            threshold: if mode == Mode::Leq { 1.0 } else { 2.0 },
            a,
            b,
            mode,
            nan_true,
        };
        let leaf = |a, b| TreeNode {
            feature: 0,
            threshold: 0.0,
            a,
            b,
            mode: Mode::Leaf,
            nan_true: false,
        };
        Forest {
            roots: vec![0, 3],
            nodes: vec![
                branch(1, 2, Mode::Leq, nan_true),
                leaf(0, 1),
                leaf(1, 2),
                branch(4, 5, Mode::Neq, nan_true),
                leaf(2, 3),
                leaf(3, 4),
            ],
            weights: vec![(0, 4.0), (0, -1.0), (0, 2.0), (1, 8.0)],
            outputs: 2,
            features: 1,
            aggregate,
        }
    }

    #[test]
    fn aggregates_follow_onnxruntime() {
        let rows = [0.5f32, 2.0, f32::NAN];
        let eval = |a, nan| stumps(a, nan).eval(&rows, 3, 1);
        // Row 0.5: leaves (0, 4) and (0, 2); row 2: (0, -1) and (1, 8);
        // row NaN: the first tree's false branch (0, -1); the second's NEQ is
        // true for NaN under IEEE comparison, as onnxruntime compares.
        assert_eq!(eval(Aggregate::Sum, false), [6.0, 0.0, -1.0, 8.0, 1.0, 0.0]);
        assert_eq!(
            eval(Aggregate::Average, false),
            [3.0, 0.0, -0.5, 4.0, 0.5, 0.0]
        );
        assert_eq!(
            eval(Aggregate::Min, false),
            [2.0, 0.0, -1.0, 8.0, -1.0, 0.0]
        );
        assert_eq!(eval(Aggregate::Max, false), [4.0, 0.0, -1.0, 8.0, 2.0, 0.0]);
        // With missing values tracking true, NaN takes the true branch of both.
        assert_eq!(eval(Aggregate::Sum, true)[4..], [6.0, 0.0]);
    }
}
