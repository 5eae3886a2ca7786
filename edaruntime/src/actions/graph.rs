//! Workflows: triggers chained through the events they emit (the `emit` of one is the event
//! of the next), drawn as Mermaid or Graphviz DOT, with their cycles.

use std::fmt::Write;

use super::Trigger;

/// The triggers of an actions file as a graph: event -> trigger -> emitted event.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// `(trigger, its event pattern, the events it emits)`, in file order.
    steps: Vec<(String, String, Vec<String>)>,
}

impl Workflow {
    pub(super) fn of(triggers: &[Trigger]) -> Workflow {
        Workflow {
            steps: triggers
                .iter()
                .map(|t| {
                    let mut emits: Vec<String> =
                        t.actions.iter().filter_map(|a| a.emit.clone()).collect();
                    emits.dedup();
                    (t.name.clone(), t.event.clone(), emits)
                })
                .collect(),
        }
    }

    /// Which triggers an event starts.
    fn started_by(&self, event: &str) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| subject_matches(&self.steps[i].1, event))
            .collect()
    }

    /// The triggers each trigger's emitted events start.
    fn next(&self, i: usize) -> Vec<usize> {
        let mut next: Vec<usize> = self.steps[i]
            .2
            .iter()
            .flat_map(|event| self.started_by(event))
            .collect();
        next.sort_unstable();
        next.dedup();
        next
    }

    /// Every cycle, as the trigger names around it (each cycle once, starting at its first
    /// trigger in file order).
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let mut found: Vec<Vec<usize>> = Vec::new();
        for start in 0..self.steps.len() {
            // Paths from `start` through later triggers only, back to `start`.
            let mut stack = vec![(start, vec![start])];
            while let Some((at, path)) = stack.pop() {
                for next in self.next(at) {
                    if next == start {
                        found.push(path.clone());
                    } else if next > start && !path.contains(&next) {
                        let mut longer = path.clone();
                        longer.push(next);
                        stack.push((next, longer));
                    }
                }
            }
        }
        found
            .into_iter()
            .map(|cycle| {
                let mut names: Vec<String> =
                    cycle.iter().map(|&i| self.steps[i].0.clone()).collect();
                names.push(self.steps[cycle[0]].0.clone());
                names
            })
            .collect()
    }

    /// A Mermaid flowchart: events as rounded nodes, triggers as boxes.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (i, (name, event, emits)) in self.steps.iter().enumerate() {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "  t{i}[\"{}\"]", quoted(name));
            let _ = writeln!(
                out,
                "  {}([\"{}\"]) --> t{i}",
                event_id(event),
                quoted(event)
            );
            for emitted in emits {
                let _ = writeln!(
                    out,
                    "  t{i} --> {}([\"{}\"])",
                    event_id(emitted),
                    quoted(emitted)
                );
            }
        }
        out
    }

    /// A Graphviz DOT digraph (render with `dot -Tsvg`).
    pub fn dot(&self) -> String {
        let mut out =
            String::from("digraph actions {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n");
        for (i, (name, event, emits)) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "  t{i} [label=\"{}\", shape=box];", quoted(name));
            let _ = writeln!(
                out,
                "  {} [label=\"{}\", shape=ellipse];",
                event_id(event),
                quoted(event)
            );
            let _ = writeln!(out, "  {} -> t{i};", event_id(event));
            for emitted in emits {
                let _ = writeln!(
                    out,
                    "  {} [label=\"{}\", shape=ellipse];",
                    event_id(emitted),
                    quoted(emitted)
                );
                let _ = writeln!(out, "  t{i} -> {};", event_id(emitted));
            }
        }
        out.push_str("}\n");
        out
    }
}

/// A node id for an event: letters, digits and `_` only.
fn event_id(event: &str) -> String {
    let mut id = String::from("e_");
    for c in event.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => id.push(c),
            '*' => id.push_str("_star_"),
            '>' => id.push_str("_all_"),
            _ => id.push('_'),
        }
    }
    id
}

/// Text for a double-quoted label.
fn quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Whether NATS subject pattern `pattern` (`*`, a last `>`) matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(s)) if token == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::super::Actions;

    fn actions(text: &str) -> Result<Actions, super::super::ActionsError> {
        Actions::parse(text, "actions.toml", &|_| None)
    }

    const CHAIN: &str = r#"
[[trigger]]
name = "sync_user"
event = "user.created"
[[trigger.action]]
type = "web_service"
url = "http://127.0.0.1:9/users"
emit = "user.synced"

[[trigger]]
name = "welcome"
event = "user.*"
[[trigger.action]]
type = "web_service"
url = "http://127.0.0.1:9/mail"
"#;

    #[test]
    fn triggers_chain_through_what_they_emit() {
        let workflow = actions(CHAIN).unwrap().workflow();
        assert!(workflow.cycles().is_empty());
        let mermaid = workflow.mermaid();
        assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
        assert!(
            mermaid.contains("e_user_created([\"user.created\"]) --> t0"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("t0 --> e_user_synced([\"user.synced\"])"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("e_user__star_([\"user.*\"]) --> t1"),
            "{mermaid}"
        );
        let dot = workflow.dot();
        assert!(dot.contains("t0 -> e_user_synced;"), "{dot}");
        assert!(dot.contains("t1 [label=\"welcome\", shape=box];"), "{dot}");
    }

    #[test]
    fn a_cycle_is_a_load_error_naming_its_triggers() {
        let looping = CHAIN.replace(
            "url = \"http://127.0.0.1:9/mail\"",
            "url = \"http://127.0.0.1:9/mail\"\nemit = \"user.created\"",
        );
        let error = actions(&looping).unwrap_err().to_string();
        assert!(
            error.contains("the triggers sync_user -> welcome -> sync_user form a cycle"),
            "{error}"
        );
    }
}
