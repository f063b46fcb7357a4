//! `planning`: the shortest 4-connected path on a grid with obstacles.
//!
//! Parameters: `width`, `height` (default [`GRID_SIDE_DEFAULT`] each), `start` and `goal` as
//! `[x, y]` (default: opposite corners, `[0, 0]` and `[width - 1, height - 1]`); obstacles either listed
//! (`obstacles`: `[[x, y], ...]`) or generated (`obstacle_density` in 0 ..= 0.5 with `seed`; a
//! generated grid always leaves `start` and `goal` free); `strategy` is `"astar"` (default,
//! optimal) or `"greedy"` (greedy best-first: expands fewer nodes, not always optimal). With no
//! obstacles given, the grid is open: `sagefed delegate --operation planning` with no
//! parameters plans across an empty 16 x 16 grid and succeeds.
//!
//! Quality is `optimal_length / length`, the optimum found by a breadth-first search: 1.0 for
//! a shortest path, less for a detour, 0.0 when there is no path (`"outcome": "unreachable"`,
//! which includes a blocked start or goal). A delegator re-checks a returned path with
//! [`verify_path`], which costs one pass over the path and the grid.
//!
//! ATP: [`PLANNING_BASE_COST`] plus [`COST_PER_NODE`] for every node the search expands (the
//! validating breadth-first search is not charged), capped at the budget. When the budget runs
//! out first, the search stops and the result is `"outcome": "budget_exhausted"` with quality
//! 0.0 and the whole budget consumed: the work was done, but it answered nothing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{
    Cancel, Operation, OperationError, OperationInput, OperationOutput, Params, SplitMix64, affordable, invalid,
    metered, missing, run_blocking,
};
use crate::protocol::atp::Atp;
use crate::protocol::verdict::Verdict;

/// Most cells in a grid (width * height): the search keeps a few bytes per cell.
pub const GRID_CELLS_MAX: u64 = 1_000_000;

/// Width and height of the grid when the task does not give them, in cells.
pub const GRID_SIDE_DEFAULT: u64 = 16;

/// Most entries in `obstacles`.
pub const OBSTACLES_MAX: usize = 100_000;

/// Highest `obstacle_density`: denser random grids are nearly always unreachable.
pub const OBSTACLE_DENSITY_MAX: f64 = 0.5;

/// Longest path listed in the result: longer paths would not fit in a proof, so only their
/// length is reported (`"path_listed": false`).
pub const PATH_CELLS_LISTED_MAX: usize = 5_000;

/// ATP charged for one expanded search node (0.001 ATP).
pub const COST_PER_NODE: Atp = Atp::from_micros(1_000);

/// ATP charged for every planning run, for parsing and building the grid (0.01 ATP).
pub const PLANNING_BASE_COST: Atp = Atp::from_micros(10_000);

/// Nodes expanded between two looks at the cancel flag.
const CANCEL_CHECK_NODES: u64 = 4_096;

const PARAMETERS: [&str; 8] = [
    "width",
    "height",
    "start",
    "goal",
    "obstacles",
    "obstacle_density",
    "seed",
    "strategy",
];

/// The built-in `planning` operation.
pub struct Planning;

impl Operation for Planning {
    fn name(&self) -> &str {
        "planning"
    }

    fn run(&self, input: OperationInput) -> BoxFuture<'static, Result<OperationOutput, OperationError>> {
        run_blocking(input.timeout, move |cancel| {
            plan(&input.parameters, input.budget, cancel)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    AStar,
    Greedy,
}

impl Strategy {
    fn as_str(self) -> &'static str {
        match self {
            Strategy::AStar => "astar",
            Strategy::Greedy => "greedy",
        }
    }
}

/// A grid and the question asked about it.
struct Problem {
    width: usize,
    height: usize,
    blocked: Vec<bool>,
    start: usize,
    goal: usize,
    strategy: Strategy,
}

impl Problem {
    fn from_parameters(parameters: &Map<String, Value>) -> Result<Self, OperationError> {
        let params = Params::new(parameters, &PARAMETERS)?;
        let width = params.u64_in("width", 1, GRID_CELLS_MAX)?.unwrap_or(GRID_SIDE_DEFAULT);
        let height = params.u64_in("height", 1, GRID_CELLS_MAX)?.unwrap_or(GRID_SIDE_DEFAULT);
        if width * height > GRID_CELLS_MAX {
            return Err(OperationError::InvalidParameters(format!(
                "the grid has {width} * {height} = {} cells; at most {GRID_CELLS_MAX} are allowed",
                width * height
            )));
        }
        // Both are at most GRID_CELLS_MAX, so they fit in usize and their product in u32.
        let (width, height) = (width as usize, height as usize);
        let point = |key: &str, default: usize| -> Result<usize, OperationError> {
            match params.get(key) {
                None => Ok(default),
                Some(value) => cell(value, width, height).map_err(|expected| invalid(key, &expected, value)),
            }
        };
        // Opposite corners: the longest trip the grid has.
        let start = point("start", 0)?;
        let goal = point("goal", width * height - 1)?;
        let strategy = match params.str("strategy")? {
            None | Some("astar") => Strategy::AStar,
            Some("greedy") => Strategy::Greedy,
            Some(other) => return Err(invalid("strategy", "\"astar\" or \"greedy\"", &Value::from(other))),
        };

        let mut blocked = vec![false; width * height];
        let density = params.f64_in("obstacle_density", 0.0, OBSTACLE_DENSITY_MAX)?;
        let seed = params.u64_in("seed", 0, u64::MAX)?;
        match (params.get("obstacles"), density, seed) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(OperationError::InvalidParameters(
                    "give either `obstacles` or `obstacle_density` with `seed`, not both".to_owned(),
                ));
            }
            (Some(list), None, None) => {
                let expected = format!("a list of at most {OBSTACLES_MAX} cells [x, y] inside the grid");
                let cells = list.as_array().filter(|l| l.len() <= OBSTACLES_MAX);
                let cells = cells.ok_or_else(|| invalid("obstacles", &expected, list))?;
                for (i, value) in cells.iter().enumerate() {
                    let index =
                        cell(value, width, height).map_err(|e| invalid(&format!("obstacles[{i}]"), &e, value))?;
                    blocked[index] = true;
                }
            }
            (None, Some(density), Some(seed)) => {
                let mut rng = SplitMix64::new(seed);
                for b in &mut blocked {
                    *b = rng.next_f64() < density;
                }
                // A generated grid asks how to get there, not whether the dice blocked the ends.
                blocked[start] = false;
                blocked[goal] = false;
            }
            (None, Some(_), None) => return Err(missing("seed", "a whole number that fixes the generated grid")),
            (None, None, Some(_)) => {
                return Err(OperationError::InvalidParameters(
                    "`seed` only applies with `obstacle_density`; give both or neither".to_owned(),
                ));
            }
            (None, None, None) => {}
        }
        Ok(Self {
            width,
            height,
            blocked,
            start,
            goal,
            strategy,
        })
    }

    fn xy(&self, index: usize) -> [usize; 2] {
        [index % self.width, index / self.width]
    }

    /// Manhattan distance to the goal: admissible and consistent on a 4-connected grid.
    fn h(&self, index: usize) -> u64 {
        let ([x, y], [gx, gy]) = (self.xy(index), self.xy(self.goal));
        (x.abs_diff(gx) + y.abs_diff(gy)) as u64
    }

    /// The free neighbours of `index`, in a fixed order (right, left, down, up).
    fn neighbours(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        let [x, y] = self.xy(index);
        let right = (x + 1 < self.width).then(|| index + 1);
        let left = (x > 0).then(|| index - 1);
        let down = (y + 1 < self.height).then(|| index + self.width);
        let up = (y > 0).then(|| index - self.width);
        [right, left, down, up]
            .into_iter()
            .flatten()
            .filter(|&n| !self.blocked[n])
    }
}

/// The cell index of `[x, y]`, or what a cell must be.
fn cell(value: &Value, width: usize, height: usize) -> Result<usize, String> {
    let expected = || format!("a cell [x, y] with x < {width} and y < {height}");
    let pair = value.as_array().filter(|p| p.len() == 2).ok_or_else(expected)?;
    let x = pair[0].as_u64().filter(|&x| x < width as u64).ok_or_else(expected)? as usize;
    let y = pair[1].as_u64().filter(|&y| y < height as u64).ok_or_else(expected)? as usize;
    Ok(y * width + x)
}

enum Outcome {
    Found(Vec<usize>),
    Unreachable,
    BudgetExhausted,
}

/// Best-first search: A* orders by g + h, greedy by h alone. Stops after `nodes_max`
/// expansions. Returns the outcome and the nodes expanded.
fn search(problem: &Problem, nodes_max: u64, cancel: &Cancel) -> Result<(Outcome, u64), OperationError> {
    const NONE: u32 = u32::MAX;
    if problem.blocked[problem.start] || problem.blocked[problem.goal] {
        return Ok((Outcome::Unreachable, 0));
    }
    let cells = problem.blocked.len();
    let mut g = vec![NONE; cells];
    let mut parent = vec![NONE; cells];
    let mut closed = vec![false; cells];
    // (priority, h, index): ties go to the node nearer the goal, then to the lower index, so the
    // order, and with it the path, is the same on every run.
    let mut open = BinaryHeap::new();
    let priority = |g: u32, h: u64| match problem.strategy {
        Strategy::AStar => u64::from(g) + h,
        Strategy::Greedy => h,
    };
    g[problem.start] = 0;
    let h0 = problem.h(problem.start);
    open.push(Reverse((priority(0, h0), h0, problem.start)));
    let mut expanded = 0u64;
    while let Some(Reverse((_, _, node))) = open.pop() {
        if closed[node] {
            continue; // a stale entry, superseded by a shorter g
        }
        if expanded == nodes_max {
            return Ok((Outcome::BudgetExhausted, expanded));
        }
        expanded += 1;
        if expanded.is_multiple_of(CANCEL_CHECK_NODES) {
            cancel.check()?;
        }
        closed[node] = true;
        if node == problem.goal {
            let mut path = vec![node];
            let mut at = node;
            while parent[at] != NONE {
                at = parent[at] as usize;
                path.push(at);
            }
            path.reverse();
            return Ok((Outcome::Found(path), expanded));
        }
        let g_next = g[node] + 1;
        for next in problem.neighbours(node) {
            // Greedy keeps the first way it found to a node; A* keeps the shortest.
            let better = match problem.strategy {
                Strategy::AStar => !closed[next] && g_next < g[next],
                Strategy::Greedy => g[next] == NONE,
            };
            if better {
                g[next] = g_next;
                parent[next] = node as u32;
                let h = problem.h(next);
                open.push(Reverse((priority(g_next, h), h, next)));
            }
        }
    }
    Ok((Outcome::Unreachable, expanded))
}

/// The length of a shortest path by breadth-first search, the independent check of quality.
fn shortest_length(problem: &Problem, cancel: &Cancel) -> Result<Option<u32>, OperationError> {
    const NONE: u32 = u32::MAX;
    if problem.blocked[problem.start] || problem.blocked[problem.goal] {
        return Ok(None);
    }
    let mut dist = vec![NONE; problem.blocked.len()];
    dist[problem.start] = 0;
    let mut queue = VecDeque::from([problem.start]);
    let mut visited = 0u64;
    while let Some(node) = queue.pop_front() {
        if node == problem.goal {
            return Ok(Some(dist[node]));
        }
        visited += 1;
        if visited.is_multiple_of(CANCEL_CHECK_NODES) {
            cancel.check()?;
        }
        for next in problem.neighbours(node) {
            if dist[next] == NONE {
                dist[next] = dist[node] + 1;
                queue.push_back(next);
            }
        }
    }
    Ok(None)
}

fn plan(parameters: &Map<String, Value>, budget: Atp, cancel: &Cancel) -> Result<OperationOutput, OperationError> {
    let problem = Problem::from_parameters(parameters)?;
    let nodes_max = affordable(PLANNING_BASE_COST, COST_PER_NODE, budget);
    let (outcome, nodes_expanded) = search(&problem, nodes_max, cancel)?;
    let mut result = Map::new();
    result.insert("strategy".into(), json!(problem.strategy.as_str()));
    result.insert("width".into(), json!(problem.width));
    result.insert("height".into(), json!(problem.height));
    result.insert(
        "obstacle_cells".into(),
        json!(problem.blocked.iter().filter(|&&b| b).count()),
    );
    result.insert("nodes_expanded".into(), json!(nodes_expanded));
    let (quality, atp_consumed) = match outcome {
        Outcome::BudgetExhausted => {
            result.insert("outcome".into(), json!("budget_exhausted"));
            (0.0, budget)
        }
        Outcome::Unreachable => {
            result.insert("outcome".into(), json!("unreachable"));
            (0.0, metered(PLANNING_BASE_COST, COST_PER_NODE, nodes_expanded, budget))
        }
        Outcome::Found(path) => {
            let length = path.len() - 1;
            let optimal = shortest_length(&problem, cancel)?.map(|l| l as usize);
            // Both searches are complete and A* with a consistent heuristic is optimal, so a
            // disagreement is a bug here, reported rather than paid for.
            let optimal = match optimal {
                Some(optimal) if optimal <= length => optimal,
                other => {
                    return Err(OperationError::Failed(format!(
                        "internal check failed: found a path of {length} moves, breadth-first search says {other:?}"
                    )));
                }
            };
            result.insert("outcome".into(), json!("found"));
            result.insert("length".into(), json!(length));
            result.insert("optimal_length".into(), json!(optimal));
            let listed = path.len() <= PATH_CELLS_LISTED_MAX;
            result.insert("path_listed".into(), json!(listed));
            if listed {
                let cells: Vec<[usize; 2]> = path.iter().map(|&i| problem.xy(i)).collect();
                result.insert("path".into(), json!(cells));
            }
            let quality = if length == 0 {
                1.0
            } else {
                optimal as f64 / length as f64
            };
            (
                quality,
                metered(PLANNING_BASE_COST, COST_PER_NODE, nodes_expanded, budget),
            )
        }
    };
    Ok(OperationOutput {
        result,
        quality,
        atp_consumed,
    })
}

/// Checks a returned `path` (`[[x, y], ...]`) against the task's `parameters`: it starts at
/// `start`, ends at `goal`, moves one cell up, down, left or right at a time, and never enters
/// an obstacle. Returns its length in moves, or what is wrong with it.
pub fn verify_path(parameters: &Map<String, Value>, path: &Value) -> Result<usize, String> {
    let problem = Problem::from_parameters(parameters).map_err(|e| e.to_string())?;
    let cells = path
        .as_array()
        .ok_or_else(|| "the path is not a list of cells [x, y]".to_owned())?;
    let mut previous: Option<usize> = None;
    for (i, value) in cells.iter().enumerate() {
        let index = cell(value, problem.width, problem.height).map_err(|e| format!("path[{i}] is not {e}"))?;
        if problem.blocked[index] {
            return Err(format!("path[{i}] {value} is an obstacle"));
        }
        if let Some(prev) = previous {
            let ([x0, y0], [x1, y1]) = (problem.xy(prev), problem.xy(index));
            if x0.abs_diff(x1) + y0.abs_diff(y1) != 1 {
                return Err(format!("path[{i}] {value} is not next to the cell before it"));
            }
        }
        previous = Some(index);
    }
    match (cells.first(), cells.last()) {
        (Some(first), Some(last)) => {
            if cell(first, problem.width, problem.height) != Ok(problem.start) {
                return Err(format!("the path starts at {first}, not at start"));
            }
            if cell(last, problem.width, problem.height) != Ok(problem.goal) {
                return Err(format!("the path ends at {last}, not at goal"));
            }
            Ok(cells.len() - 1)
        }
        _ => Err("the path is empty".to_owned()),
    }
}

/// The verdict on a returned planning `result` for the task's `parameters`, checked without
/// trusting anything the executor computed: a listed path must be valid ([`verify_path`]) and
/// is scored against the breadth-first optimum the checker finds itself; "unreachable" must
/// be true; a found path too long to list is scored by its claimed length, which may not
/// beat the optimum. Costs one breadth-first search over the grid.
pub fn verify_result(parameters: &Map<String, Value>, result: &Map<String, Value>) -> Verdict {
    let problem = match Problem::from_parameters(parameters) {
        Ok(problem) => problem,
        // A task the executor should have refused: it claims a completed run of it.
        Err(e) => return Verdict::refuted(format!("the task's parameters do not describe a grid: {e}")),
    };
    let optimal = match shortest_length(&problem, &Cancel::default()) {
        Ok(optimal) => optimal.map(|l| l as usize),
        Err(e) => return Verdict::refuted(format!("the checker's search failed: {e}")),
    };
    match (result.get("outcome").and_then(Value::as_str), optimal) {
        (Some("budget_exhausted"), _) => Verdict::verified(0.0),
        (Some("unreachable"), None) => Verdict::verified(0.0),
        (Some("unreachable"), Some(optimal)) => {
            Verdict::refuted(format!("the goal is reachable in {optimal} moves, not unreachable"))
        }
        (Some("found"), None) => Verdict::refuted("the goal is unreachable, yet a path was claimed"),
        (Some("found"), Some(optimal)) => {
            let length = match result.get("path") {
                Some(path) => match verify_path(parameters, path) {
                    Ok(length) => length,
                    Err(why) => return Verdict::refuted(format!("the path is invalid: {why}")),
                },
                None => match result.get("length").and_then(Value::as_u64) {
                    Some(length) if length as usize >= optimal => length as usize,
                    Some(length) => {
                        return Verdict::refuted(format!(
                            "a path of {length} moves is shorter than the optimum {optimal}"
                        ));
                    }
                    None => return Verdict::refuted("a found path with neither cells nor a length"),
                },
            };
            if let Some(claimed) = result.get("length").and_then(Value::as_u64)
                && claimed as usize != length
            {
                return Verdict::refuted(format!("the path has {length} moves, the result claims {claimed}"));
            }
            Verdict::verified(if length == 0 {
                1.0
            } else {
                optimal as f64 / length as f64
            })
        }
        (other, _) => Verdict::refuted(format!("unknown outcome {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    fn run(parameters: Value, budget: Atp) -> Result<OperationOutput, OperationError> {
        plan(&params(parameters), budget, &Cancel::default())
    }

    const PLENTY: Atp = Atp::from_micros(1_000_000_000);

    /// 5 x 5, a wall in column 2 from row 0 to row 3: the only way round is through row 4.
    fn walled() -> Value {
        json!({
            "width": 5, "height": 5, "start": [0, 0], "goal": [4, 0],
            "obstacles": [[2, 0], [2, 1], [2, 2], [2, 3]],
        })
    }

    #[test]
    fn astar_finds_the_shortest_path_and_it_verifies() {
        let out = run(walled(), PLENTY).expect("runs");
        assert_eq!(out.result["outcome"], "found");
        // Down 4, right 4, up 4.
        assert_eq!(out.result["length"], 12);
        assert_eq!(out.result["optimal_length"], 12);
        assert_eq!(out.quality, 1.0);
        assert_eq!(verify_path(&params(walled()), &out.result["path"]), Ok(12));
        let nodes = out.result["nodes_expanded"].as_u64().expect("a count");
        assert_eq!(
            out.atp_consumed.micros(),
            PLANNING_BASE_COST.micros() + nodes * COST_PER_NODE.micros()
        );
    }

    /// Greedy follows the falling heuristic up into the gap at (2,2) and round the block at
    /// (4,2): 9 moves where 7 (along row 3) suffice.
    ///
    /// ```text
    ///   x 0 1 2 3 4 5
    /// y0  # # # # . .
    /// y1  . # . . . .
    /// y2  S # . . # G
    /// y3  . . . . . .
    /// y4  . . # . # #
    /// ```
    fn detour(strategy: &str) -> Value {
        json!({
            "width": 6, "height": 5, "start": [0, 2], "goal": [5, 2], "strategy": strategy,
            "obstacles": [[0, 0], [1, 0], [2, 0], [3, 0], [1, 1], [1, 2], [4, 2], [2, 4], [4, 4], [5, 4]],
        })
    }

    #[test]
    fn greedy_can_take_a_detour_and_quality_says_so() {
        let astar = run(detour("astar"), PLENTY).expect("runs");
        let greedy = run(detour("greedy"), PLENTY).expect("runs");
        assert_eq!(astar.quality, 1.0);
        let (length, optimal) = (&greedy.result["length"], &greedy.result["optimal_length"]);
        let (length, optimal) = (length.as_u64().expect("n"), optimal.as_u64().expect("n"));
        assert_eq!(optimal, astar.result["length"].as_u64().expect("n"));
        assert_eq!((length, optimal), (9, 7));
        assert_eq!(greedy.quality, optimal as f64 / length as f64);
        assert!(greedy.quality < 1.0);
        // Still a valid path, just a longer one.
        assert_eq!(
            verify_path(&params(detour("greedy")), &greedy.result["path"]),
            Ok(length as usize)
        );
    }

    #[test]
    fn an_unreachable_goal_has_quality_zero() {
        let closed_in = json!({
            "width": 3, "height": 3, "start": [0, 0], "goal": [2, 2],
            "obstacles": [[1, 2], [2, 1]],
        });
        let out = run(closed_in, PLENTY).expect("runs");
        assert_eq!(out.result["outcome"], "unreachable");
        assert_eq!(out.quality, 0.0);

        let blocked_goal = json!({"width": 3, "height": 3, "start": [0, 0], "goal": [2, 2], "obstacles": [[2, 2]]});
        let out = run(blocked_goal, PLENTY).expect("runs");
        assert_eq!(out.result["outcome"], "unreachable");
        assert_eq!(out.quality, 0.0);
        assert_eq!(out.result["nodes_expanded"], 0);
    }

    #[test]
    fn start_equal_to_goal_is_a_path_of_length_zero() {
        let out = run(
            json!({"width": 1, "height": 1, "start": [0, 0], "goal": [0, 0]}),
            PLENTY,
        )
        .expect("runs");
        assert_eq!(out.result["length"], 0);
        assert_eq!(out.quality, 1.0);
    }

    #[test]
    fn no_parameters_plan_corner_to_corner_on_an_open_default_grid() {
        let out = run(json!({}), PLENTY).expect("runs");
        let side = GRID_SIDE_DEFAULT as usize;
        assert_eq!(out.result["width"], side);
        assert_eq!(out.result["length"], 2 * (side - 1));
        assert_eq!(out.quality, 1.0);
        // A width alone keeps the default height, and the goal follows the grid's corner.
        let out = run(json!({"width": 4}), PLENTY).expect("runs");
        assert_eq!(out.result["length"], 3 + (side - 1));
    }

    #[test]
    fn bad_parameters_are_refused_with_what_to_do() {
        let cases = [
            (
                json!({"width": 2000, "height": 1000, "start": [0, 0], "goal": [1, 1]}),
                "at most 1000000",
            ),
            (
                json!({"width": 0, "height": 10, "start": [0, 0], "goal": [1, 1]}),
                "`width` must be",
            ),
            (
                json!({"width": 10, "height": 10, "start": [10, 0], "goal": [1, 1]}),
                "`start` must be a cell",
            ),
            (
                json!({"width": 10, "height": 10, "start": [0, 0], "goal": "far"}),
                "`goal` must be",
            ),
            (
                json!({"width": 10, "height": 10, "start": [0, 0], "goal": [1, 1], "obstacles": [[1, 0], [0, -1]]}),
                "`obstacles[1]` must be",
            ),
            (
                json!({"width": 10, "height": 10, "start": [0, 0], "goal": [1, 1], "obstacle_density": 0.9, "seed": 1}),
                "`obstacle_density` must be a number from 0 to 0.5",
            ),
            (
                json!({"width": 10, "height": 10, "start": [0, 0], "goal": [1, 1], "obstacle_density": 0.2}),
                "`seed` is missing",
            ),
            (
                json!({"width": 10, "height": 10, "start": [0, 0], "goal": [1, 1], "obstacles": [], "seed": 3}),
                "not both",
            ),
            (
                json!({"width": 10, "height": 10, "start": [0, 0], "goal": [1, 1], "strategy": "dijkstra"}),
                "\"astar\" or \"greedy\"",
            ),
            (
                json!({"width": 10, "height": 10, "start": [0, 0], "goal": [1, 1], "goals": []}),
                "unknown parameter",
            ),
        ];
        for (parameters, expected) in cases {
            match run(parameters.clone(), PLENTY) {
                Err(OperationError::InvalidParameters(why)) => assert!(why.contains(expected), "{parameters}: {why}"),
                other => panic!("{parameters}: expected InvalidParameters, got {other:?}"),
            }
        }
        let too_many: Vec<[u64; 2]> = (0..=OBSTACLES_MAX as u64).map(|i| [i % 1000, i / 1000]).collect();
        let parameters = json!({"width": 1000, "height": 1000, "start": [0, 0], "goal": [1, 1], "obstacles": too_many});
        assert!(
            matches!(run(parameters, PLENTY), Err(OperationError::InvalidParameters(why)) if why.contains("at most 100000"))
        );
    }

    #[test]
    fn verify_path_catches_broken_paths() {
        let p = params(walled());
        let good = json!([
            [0, 0],
            [0, 1],
            [0, 2],
            [0, 3],
            [0, 4],
            [1, 4],
            [2, 4],
            [3, 4],
            [4, 4],
            [4, 3],
            [4, 2],
            [4, 1],
            [4, 0]
        ]);
        assert_eq!(verify_path(&p, &good), Ok(12));
        let cases = [
            (
                json!([
                    [0, 0],
                    [0, 1],
                    [0, 2],
                    [0, 3],
                    [0, 4],
                    [1, 4],
                    [3, 4],
                    [4, 4],
                    [4, 3],
                    [4, 2],
                    [4, 1],
                    [4, 0]
                ]),
                "not next to",
            ),
            (json!([[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]), "obstacle"),
            (json!([[0, 1], [0, 0]]), "starts at"),
            (json!([[0, 0], [0, 1]]), "ends at"),
            (json!([[0, 0], [0, 0]]), "not next to"),
            (json!([]), "empty"),
            (json!([[0, 0], [9, 9]]), "path[1] is not a cell"),
            (json!("down, right, up"), "not a list"),
        ];
        for (path, expected) in cases {
            let why = verify_path(&p, &path).expect_err("broken");
            assert!(why.contains(expected), "{path}: {why}");
        }
    }

    #[test]
    fn consumption_never_exceeds_the_budget() {
        let generated = json!({
            "width": 300, "height": 300, "start": [0, 0], "goal": [299, 299],
            "obstacle_density": 0.3, "seed": 7,
        });
        let full = run(generated.clone(), PLENTY).expect("runs");
        let nodes = full.result["nodes_expanded"].as_u64().expect("n");
        assert!(nodes > 1_000, "{nodes}");
        for budget_micros in [0, 5_000, 10_000, 10_999, 11_000, 50_000, 150_000] {
            let budget = Atp::from_micros(budget_micros);
            let out = run(generated.clone(), budget).expect("runs");
            assert!(out.atp_consumed <= budget, "{budget}: consumed {}", out.atp_consumed);
            let expanded = out.result["nodes_expanded"].as_u64().expect("n");
            assert!(PLANNING_BASE_COST.micros() + expanded * COST_PER_NODE.micros() <= budget_micros.max(10_000));
            assert_eq!(out.result["outcome"], "budget_exhausted");
            assert_eq!(out.quality, 0.0);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_grid_and_path() {
        let generated = |seed: u64| {
            json!({
                "width": 200, "height": 100, "start": [3, 50], "goal": [190, 20],
                "obstacle_density": 0.25, "seed": seed, "strategy": "greedy",
            })
        };
        let a = run(generated(42), PLENTY).expect("runs");
        let b = run(generated(42), PLENTY).expect("runs");
        let c = run(generated(43), PLENTY).expect("runs");
        assert_eq!(a, b);
        assert_ne!(a.result["obstacle_cells"], c.result["obstacle_cells"]);
        assert_eq!(a.result["outcome"], "found");
        let length = a.result["length"].as_u64().expect("n") as usize;
        assert_eq!(verify_path(&params(generated(42)), &a.result["path"]), Ok(length));
    }

    #[tokio::test]
    async fn a_large_grid_runs_on_the_blocking_pool_within_its_timeout() {
        let input = OperationInput {
            parameters: params(json!({
                "width": 1000, "height": 1000, "start": [0, 0], "goal": [999, 999],
                "obstacle_density": 0.2, "seed": 1,
            })),
            budget: PLENTY,
            timeout: Duration::from_secs(60),
            memory_mb: 512,
        };
        let out = Planning.run(input.clone()).await.expect("runs");
        assert_eq!(out.result["outcome"], "found");
        assert_eq!(out.quality, 1.0);

        let quick = OperationInput {
            timeout: Duration::ZERO,
            ..input
        };
        assert!(matches!(
            Planning.run(quick).await,
            Err(OperationError::TimedOut { .. })
        ));
    }

    #[test]
    fn the_check_scores_a_path_itself_and_refutes_a_made_up_one() {
        let p = params(walled());
        let honest = run(walled(), PLENTY).expect("runs");
        assert_eq!(verify_result(&p, &honest.result), Verdict::verified(1.0));
        // A detour: valid, scored against the checker's own optimum (12), whatever it claims.
        let mut detour = honest.result.clone();
        let cells: Value = serde_json::from_str(
            "[[0,0],[0,1],[0,2],[0,3],[0,4],[1,4],[1,3],[1,4],[2,4],[3,4],[4,4],[4,3],[4,2],[4,1],[4,0]]",
        )
        .expect("json");
        detour.insert("path".into(), cells);
        detour.insert("length".into(), json!(14));
        assert_eq!(verify_result(&p, &detour), Verdict::verified(12.0 / 14.0));
        // Garbage: through the wall, or a length that is not the path's.
        let mut through_wall = honest.result.clone();
        through_wall.insert("path".into(), json!([[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]));
        through_wall.insert("length".into(), json!(4));
        assert!(matches!(verify_result(&p, &through_wall), Verdict::Refuted { why } if why.contains("obstacle")));
        let mut wrong_length = honest.result.clone();
        wrong_length.insert("length".into(), json!(11));
        assert!(matches!(verify_result(&p, &wrong_length), Verdict::Refuted { .. }));
        // "Unreachable" when it is reachable; no outcome at all.
        let mut lazy = Map::new();
        lazy.insert("outcome".into(), json!("unreachable"));
        assert!(matches!(verify_result(&p, &lazy), Verdict::Refuted { why } if why.contains("reachable in 12")));
        assert!(matches!(verify_result(&p, &Map::new()), Verdict::Refuted { .. }));
    }
}
