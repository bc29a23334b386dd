//! Choice expressions (`workflow.steps.<status>.choices[].when`): the small language a step's
//! answer is judged by, e.g. `status == 200 and body.approved == true`.
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | compare
//! compare := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
//! operand := path | number | 'string' | "string" | true | false | null | "(" expr ")"
//! path    := name ("." name | "[" index "]")*
//! ```
//!
//! Paths read the JSON context a step is judged in (`status`, `body`, `order`, `attempt`); a
//! path that leads nowhere is `null`. `==` compares JSON values (numbers by value, `1 == 1.0`);
//! the orderings compare two numbers or two strings and are false otherwise. An operand alone
//! is true unless it is `null` or `false`. Parsing happens at start-up (config validation), so
//! a typo refuses to start instead of failing an order.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(Op, Operand, Operand),
    Truthy(Operand),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Vec<Segment>),
    Literal(Value),
    Group(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Number(f64),
    Str(String),
    Op(Op),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
}

fn tokenize(src: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '.' => {
                out.push(Token::Dot);
                i += 1
            }
            '[' => {
                out.push(Token::LBracket);
                i += 1
            }
            ']' => {
                out.push(Token::RBracket);
                i += 1
            }
            '(' => {
                out.push(Token::LParen);
                i += 1
            }
            ')' => {
                out.push(Token::RParen);
                i += 1
            }
            '=' | '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('=', Some('=')) => (Op::Eq, 2),
                    ('!', Some('=')) => (Op::Ne, 2),
                    ('<', Some('=')) => (Op::Le, 2),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', _) => (Op::Gt, 1),
                    _ => {
                        return Err(format!(
                            "unexpected `{c}` at {i} (comparisons are == != < <= > >=)"
                        ));
                    }
                };
                out.push(Token::Op(op));
                i += len;
            }
            '\'' | '"' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("a string is not closed".into()),
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(&e) => s.push(e),
                                None => return Err("a string is not closed".into()),
                            }
                            i += 2;
                        }
                        Some(&q) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Str(s));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit()
                        || chars[i] == '.'
                        || chars[i] == 'e'
                        || chars[i] == 'E')
                {
                    // `1.x` is not a number followed by a path: digits only after the dot.
                    if chars[i] == '.' && !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                        break;
                    }
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text
                    .parse::<f64>()
                    .map_err(|_| format!("`{text}` is not a number"))?;
                out.push(Token::Number(n));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric()
                        || chars[i] == '_'
                        || chars[i] == '-'
                        || chars[i] == '$')
                {
                    i += 1;
                }
                out.push(Token::Name(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected `{other}` at {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Name(n)) if n == word)
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.keyword("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        let left = self.operand()?;
        if let Some(Token::Op(op)) = self.peek().cloned() {
            self.at += 1;
            let right = self.operand()?;
            return Ok(Expr::Compare(op, left, right));
        }
        Ok(Expr::Truthy(left))
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.next() {
            Some(Token::Number(n)) => Ok(Operand::Literal(
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
            )),
            Some(Token::Str(s)) => Ok(Operand::Literal(Value::String(s))),
            Some(Token::LParen) => {
                let inner = self.expr()?;
                match self.next() {
                    Some(Token::RParen) => Ok(Operand::Group(Box::new(inner))),
                    _ => Err("a `(` is not closed".into()),
                }
            }
            Some(Token::Name(name)) => match name.as_str() {
                "true" => Ok(Operand::Literal(Value::Bool(true))),
                "false" => Ok(Operand::Literal(Value::Bool(false))),
                "null" => Ok(Operand::Literal(Value::Null)),
                "and" | "or" | "not" => Err(format!("`{name}` where a value was expected")),
                _ => {
                    let mut path = vec![Segment::Field(name)];
                    loop {
                        match self.peek() {
                            Some(Token::Dot) => {
                                self.at += 1;
                                match self.next() {
                                    Some(Token::Name(n)) => path.push(Segment::Field(n)),
                                    _ => return Err("a `.` must be followed by a name".into()),
                                }
                            }
                            Some(Token::LBracket) => {
                                self.at += 1;
                                let index = match self.next() {
                                    Some(Token::Number(n)) if n >= 0.0 && n.fract() == 0.0 => {
                                        n as usize
                                    }
                                    _ => return Err("`[` must hold an index (0, 1, ...)".into()),
                                };
                                if self.next() != Some(Token::RBracket) {
                                    return Err("a `[` is not closed".into());
                                }
                                path.push(Segment::Index(index));
                            }
                            _ => break,
                        }
                    }
                    Ok(Operand::Path(path))
                }
            },
            Some(other) => Err(format!("unexpected {other:?} where a value was expected")),
            None => Err("the expression ends where a value was expected".into()),
        }
    }
}

impl Expr {
    pub fn parse(src: &str) -> Result<Expr, String> {
        let tokens = tokenize(src)?;
        if tokens.is_empty() {
            return Err("the expression is empty".into());
        }
        let mut parser = Parser { tokens, at: 0 };
        let expr = parser.expr()?;
        if parser.at < parser.tokens.len() {
            return Err(format!(
                "unexpected {:?} after a complete expression",
                parser.tokens[parser.at]
            ));
        }
        Ok(expr)
    }

    /// Whether the expression holds in `context` (an object: `status`, `body`, `order`...).
    pub fn holds(&self, context: &Value) -> bool {
        match self {
            Expr::Or(a, b) => a.holds(context) || b.holds(context),
            Expr::And(a, b) => a.holds(context) && b.holds(context),
            Expr::Not(a) => !a.holds(context),
            Expr::Truthy(operand) => truthy(&operand.value(context)),
            Expr::Compare(op, a, b) => compare(*op, &a.value(context), &b.value(context)),
        }
    }
}

impl Operand {
    fn value(&self, context: &Value) -> Value {
        match self {
            Operand::Literal(v) => v.clone(),
            Operand::Group(e) => Value::Bool(e.holds(context)),
            Operand::Path(path) => lookup(context, path).cloned().unwrap_or(Value::Null),
        }
    }
}

/// The value `path` leads to in `root`, if any.
pub fn lookup<'a>(root: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, seg| match seg {
        Segment::Field(name) => v.get(name.as_str()),
        Segment::Index(i) => v.get(*i),
    })
}

/// A dotted path (`order.metadata.cancelAt`, `body.items[0].sku`) as segments.
pub fn parse_path(src: &str) -> Result<Vec<Segment>, String> {
    match Expr::parse(src)? {
        Expr::Truthy(Operand::Path(path)) => Ok(path),
        _ => Err(format!("`{src}` is not a path")),
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

fn compare(op: Op, a: &Value, b: &Value) -> bool {
    let equal = || match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    };
    let order = || match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => equal(),
        Op::Ne => !equal(),
        Op::Lt => order() == Some(Less),
        Op::Le => matches!(order(), Some(Less | Equal)),
        Op::Gt => order() == Some(Greater),
        Op::Ge => matches!(order(), Some(Greater | Equal)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(src: &str, context: &Value) -> bool {
        Expr::parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .holds(context)
    }

    #[test]
    fn comparisons_join_with_and_or_not_and_parentheses() {
        let c = json!({"status": 200, "body": {"approved": true, "amount": 12.5, "tags": ["a", "b"], "code": "OK"}});
        assert!(holds("status == 200 and body.approved == true", &c));
        assert!(!holds("status == 200 and body.approved == false", &c));
        assert!(holds("status != 500", &c));
        assert!(holds("body.amount > 10 and body.amount <= 12.5", &c));
        assert!(holds("body.tags[1] == 'b'", &c));
        assert!(holds("body.code == \"OK\"", &c));
        assert!(holds("not (status >= 300 or body.approved == false)", &c));
        assert!(holds("body.approved", &c));
        assert!(!holds("body.missing", &c));
        assert!(holds("body.missing == null", &c));
        assert!(holds("status == 200.0", &c));
        assert!(
            !holds("body.code < 5", &c),
            "orderings of mixed types are false"
        );
        assert!(holds("body.amount >= -1", &c));
    }

    #[test]
    fn malformed_expressions_are_refused_with_a_reason() {
        for bad in [
            "",
            "status ==",
            "status = 200",
            "(status == 200",
            "status == 200 200",
            "body.",
            "body[x]",
            "'open",
            "and",
        ] {
            assert!(Expr::parse(bad).is_err(), "`{bad}` parses");
        }
    }

    #[test]
    fn paths_parse_on_their_own() {
        assert_eq!(
            parse_path("order.metadata.cancelAt").unwrap(),
            vec![
                Segment::Field("order".into()),
                Segment::Field("metadata".into()),
                Segment::Field("cancelAt".into())
            ]
        );
        assert!(parse_path("status == 1").is_err());
    }
}
