//! SQL expressions over one table's rows: DataFusion's parser, planner, type coercion and
//! physical expressions, without its query engine.
//!
//! An expression sees the table's columns by their source names (case-sensitive; quote
//! names that are not plain identifiers with `"`), scalar functions (string, date,
//! math, regex, encoding, `coalesce`, `CASE`, casts), and nothing else: no tables,
//! aggregates or subqueries. Functions whose result can change between two evaluations
//! of the same row (`now()`, `random()`, `uuid()`) are refused, so the snapshot and the
//! stream, and a replay after a crash, shape every row the same way.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::TreeNode;
use datafusion_common::{DFSchema, DataFusionError, TableReference, plan_err};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::simplify::SimplifyContext;
use datafusion_expr::{
    AggregateUDF, Expr, ExprSchemable, HigherOrderUDF, ScalarUDF, TableSource, Volatility,
    WindowUDF,
};
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
use datafusion_physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion_sql::parser::DFParser;
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::ast::{Expr as SqlExpr, Spanned, visit_expressions};
use datafusion_sql::sqlparser::parser::ParserError;

/// What is wrong with an expression, and where in its text (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    /// What is wrong, and what to write instead where that is known.
    pub message: String,
    /// Line and column within the expression's text.
    pub at: Option<(u64, u64)>,
}

impl std::fmt::Display for ExprError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ExprError {
    fn new(message: impl Into<String>) -> Self {
        ExprError {
            message: message.into(),
            at: None,
        }
    }

    fn from_datafusion(e: &DataFusionError) -> Self {
        let at = e
            .diagnostic()
            .and_then(|d| d.span)
            .map(|s| (s.start.line, s.start.column))
            .filter(|(line, _)| *line > 0);
        let message = match e.find_root() {
            DataFusionError::SQL(p, _) => match p.as_ref() {
                ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
                ParserError::RecursionLimitExceeded => "the expression nests too deeply".into(),
            },
            DataFusionError::Diagnostic(d, _) => d.message.clone(),
            root => root.message().into_owned(),
        };
        // sqlparser appends " at Line: L, Column: C" to its messages.
        match message.rsplit_once(" at Line: ") {
            Some((text, loc)) => {
                let parsed = loc
                    .split_once(", Column: ")
                    .and_then(|(l, c)| Some((l.trim().parse().ok()?, c.trim().parse().ok()?)));
                ExprError {
                    message: text.to_string(),
                    at: parsed.or(at),
                }
            }
            None => ExprError { message, at },
        }
    }
}

/// The scalar functions and the planners of special syntax (`EXTRACT`, `SUBSTRING ...
/// FROM`, `POSITION ... IN`) an expression may use.
struct Functions {
    by_name: HashMap<String, Arc<ScalarUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

fn functions() -> &'static Functions {
    static FUNCTIONS: OnceLock<Functions> = OnceLock::new();
    FUNCTIONS.get_or_init(|| {
        let mut by_name = HashMap::new();
        for f in datafusion_functions::all_default_functions() {
            for alias in f.aliases() {
                by_name.insert(alias.to_ascii_lowercase(), Arc::clone(&f));
            }
            by_name.insert(f.name().to_ascii_lowercase(), f);
        }
        Functions {
            by_name,
            planners: vec![
                Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
                Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
                Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
            ],
            options: ConfigOptions::default(),
        }
    })
}

impl ContextProvider for Functions {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        plan_err!("an expression sees one row of its table; it cannot read table {name}")
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.by_name.get(&name.to_ascii_lowercase()).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }

    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Parse `sql` as one expression and check the functions it calls: the checks
/// `validate` makes without knowing the table.
pub fn parse(sql: &str) -> Result<(), ExprError> {
    let parsed = parse_expr(sql)?;
    let mut found = Ok(());
    let _ = visit_expressions(&parsed, |e| {
        if let SqlExpr::Function(f) = e {
            let name = f.name.to_string().to_ascii_lowercase();
            let start = e.span().start;
            let at = (start.line > 0).then_some((start.line, start.column));
            let problem = match functions().by_name.get(&name) {
                None => Some(format!(
                    "unknown function {name}(); an expression may call scalar functions \
                         (string, date, math, regex, encoding, coalesce and the like) but no \
                         aggregates or functions of other databases"
                )),
                Some(udf) if udf.signature().volatility != Volatility::Immutable => {
                    Some(changing(&name))
                }
                Some(_) => None,
            };
            if let Some(message) = problem {
                found = Err(ExprError { message, at });
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

fn changing(name: &str) -> String {
    format!(
        "{name}() gives a different result each time it runs, so a row would be shaped \
             differently by the snapshot, the stream and a replay after a restart; use the \
             metadata column _ingested_at or _source_ts instead of the current time"
    )
}

fn parse_expr(sql: &str) -> Result<SqlExpr, ExprError> {
    let parsed = DFParser::parse_sql_into_expr(sql).map_err(|e| {
        let mut e = ExprError::from_datafusion(&e);
        // The end of the text has no location of its own: it is just after the last
        // character.
        if e.at.is_none() && e.message.ends_with("found: EOF") {
            let line = sql.lines().count().max(1);
            let last = sql.lines().last().unwrap_or_default();
            e.at = Some((line as u64, last.chars().count() as u64 + 1));
        }
        e
    })?;
    if let Some(alias) = parsed.alias {
        return Err(ExprError::new(format!(
            "write the expression without `AS {alias}`: the column's name is the key it \
                 is given"
        )));
    }
    Ok(parsed.expr)
}

/// An expression compiled for one table's schema.
#[derive(Debug, Clone)]
pub struct Compiled {
    expr: Arc<dyn PhysicalExpr>,
    /// The type of its result.
    pub data_type: DataType,
    /// Whether its result may be null.
    pub nullable: bool,
    /// The columns it reads.
    pub columns: Vec<String>,
}

/// Compile `sql` over rows of `schema`.
pub fn compile(sql: &str, schema: &SchemaRef) -> Result<Compiled, ExprError> {
    let df = |e: DataFusionError| ExprError::from_datafusion(&e);
    let parsed = parse_expr(sql)?;
    let df_schema = DFSchema::try_from(Arc::clone(schema)).map_err(df)?;
    let options = ParserOptions::new()
        .with_collect_spans(true)
        .with_enable_ident_normalization(false)
        .with_map_string_types_to_utf8view(false);
    let expr = SqlToRel::new_with_options(functions(), options)
        .sql_to_expr(parsed, &df_schema, &mut PlannerContext::new())
        .map_err(df)?;
    let mut volatile = None;
    expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && f.func.signature().volatility != Volatility::Immutable
        {
            volatile = Some(f.func.name().to_string());
            return Ok(datafusion_common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion_common::tree_node::TreeNodeRecursion::Continue)
    })
    .map_err(df)?;
    if let Some(name) = volatile {
        return Err(ExprError::new(changing(&name)));
    }
    let columns = expr
        .column_refs()
        .into_iter()
        .map(|c| c.name.clone())
        .collect();
    let df_schema = Arc::new(df_schema);
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(Arc::clone(&df_schema))
            .build(),
    );
    let expr = simplifier.coerce(expr, &df_schema).map_err(df)?;
    let expr = simplifier.simplify(expr).map_err(df)?;
    let (_, field) = expr.to_field(&df_schema).map_err(df)?;
    let (data_type, nullable) = (field.data_type().clone(), field.is_nullable());
    let expr = create_physical_expr(&expr, &df_schema, &ExecutionProps::new()).map_err(df)?;
    Ok(Compiled {
        expr,
        data_type,
        nullable,
        columns,
    })
}

impl Compiled {
    /// The expression's value for every row of `batch` (in the schema it was compiled for).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, String> {
        self.expr
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| ExprError::from_datafusion(&e).message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BooleanArray, Int64Array, StringArray};
    use arrow_schema::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("Region", DataType::Utf8, true),
        ]))
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("eu"), Some("us"), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_filter_keeps_matching_rows_and_treats_null_as_false() {
        let c = compile("\"Region\" = 'eu' OR id > 2", &schema()).unwrap();
        assert_eq!(c.data_type, DataType::Boolean);
        let v = c.evaluate(&batch()).unwrap();
        let v = v.as_any().downcast_ref::<BooleanArray>().unwrap();
        assert!(v.value(0));
        assert!(!v.value(1));
        assert!(v.value(2));
        assert_eq!(c.columns.len(), 2);
    }

    #[test]
    fn computed_columns_use_functions_casts_and_special_syntax() {
        let c = compile(
            "upper(Region) || '-' || CAST(id * 10 AS VARCHAR)",
            &schema(),
        )
        .unwrap();
        assert_eq!(c.data_type, DataType::Utf8);
        let v = c.evaluate(&batch()).unwrap();
        let v = v.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(v.value(0), "EU-10");
        assert!(v.is_null(2));
        let c = compile("SUBSTRING(Region FROM 1 FOR 1)", &schema()).unwrap();
        let v = arrow_cast::cast(&c.evaluate(&batch()).unwrap(), &DataType::Utf8).unwrap();
        assert_eq!(
            v.as_any().downcast_ref::<StringArray>().unwrap().value(1),
            "u"
        );
        compile("EXTRACT(YEAR FROM CAST('2026-01-02' AS DATE))", &schema()).unwrap();
    }

    #[test]
    fn errors_name_the_problem_and_where_it_is() {
        let e = parse("id >").unwrap_err();
        assert!(e.message.contains("Expected"), "{e:?}");
        assert_eq!(e.at.map(|a| a.0), Some(1), "{e:?}");
        let e = compile("regon = 'eu'", &schema()).unwrap_err();
        assert!(e.message.contains("regon"), "{e:?}");
        assert_eq!(e.at, Some((1, 1)), "{e:?}");
        let e = compile("id + no_such_fn(id)", &schema()).unwrap_err();
        assert!(e.message.contains("no_such_fn"), "{e:?}");
        let e = compile("id AS x", &schema()).unwrap_err();
        assert!(e.message.contains("without `AS x`"), "{e:?}");
        let e = compile("id + 'abc'", &schema()).unwrap_err();
        assert!(!e.message.is_empty(), "{e:?}");
        for f in ["now()", "random()", "uuid()", "current_date()"] {
            let e = compile(&format!("{f} IS NOT NULL"), &schema()).unwrap_err();
            assert!(
                e.message.contains("different result each time"),
                "{f}: {e:?}"
            );
        }
        let e = parse("upper(x) || nosuch(y)").unwrap_err();
        assert!(e.message.contains("unknown function nosuch()"), "{e:?}");
        assert_eq!(e.at, Some((1, 13)), "{e:?}");
        let e = parse("x > now()").unwrap_err();
        assert!(e.message.contains("different result each time"), "{e:?}");
        let e = compile("sum(id)", &schema()).unwrap_err();
        assert!(e.message.contains("sum"), "{e:?}");
    }
}
