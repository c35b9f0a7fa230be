// Rewrites an ES module into the body of a function, in place: each import
// becomes a `const` taken from `$plugboard$.ns(i)`, `export` keywords become
// spaces, `import()` and `import.meta` go through `$plugboard$`. Every line
// keeps its number (and most columns), so SpiderMonkey's own syntax errors
// and stacks point into the author's file.
//
// A lexer, not a parser: it skips strings, comments, templates and regular
// expressions, tracks brackets, and reads only the import and export
// statements at the top level. A full JS parser (acorn) in the runner took
// 0.5-0.9 ms a line in the SpiderMonkey interpreter; SpiderMonkey itself
// checks the syntax of the result when the runner evaluates it.
export const RT = '$plugboard$';

const NEWLINES = /\r\n|[\n\r\u2028\u2029]/g;
const lineOf = (source, at) => (source.slice(0, at).match(NEWLINES) ?? []).length + 1;
const keepLines = (text) => '\n'.repeat((text.match(NEWLINES) ?? []).length);

export class ModuleSyntaxError extends Error {
  constructor(source, at, message) {
    super(message);
    this.line = lineOf(source, at);
    this.column = at - Math.max(source.lastIndexOf('\n', at - 1), source.lastIndexOf('\r', at - 1));
  }
}

// No \p{...}: StarlingMonkey's SpiderMonkey has no ICU; non-ASCII counts as a letter.
const INTERESTING = /['"`/(){}[\]]|(?<![\w$\u0080-\uffff.])(?:import|export)(?![\w$\u0080-\uffff])/g;
const STRING = /'(?:[^'\\\n\r]|\\[\s\S])*'|"(?:[^"\\\n\r]|\\[\s\S])*"/y;
const TEMPLATE_PART = /(?:[^`\\$]|\\[\s\S]|\$(?!\{))*(`|\$\{)/y;
const REGEX = /\/(?:[^/\\[\n\r]|\\.|\[(?:[^\]\\\n\r]|\\.)*\])+\/[\w$]*/y;
const BEFORE_REGEX = /(?:^|[^\w$\u0080-\uffff.])(?:return|typeof|instanceof|in|of|new|delete|void|throw|case|do|else|yield|await|extends)$/;
const LINE_COMMENT = /\/\/[^\n\r\u2028\u2029]*/y;
const SPACE = /(?:\s|\/\/[^\n\r]*|\/\*[\s\S]*?\*\/)*/y;
const TOKEN = /([A-Za-z_$\u0080-\uffff][\w$\u0080-\uffff]*)|('(?:[^'\\\n\r]|\\[\s\S])*'|"(?:[^"\\\n\r]|\\[\s\S])*")|(\.\.\.|[^\s])/y;

/// Where the string, comment, template or regex starting at `i` ends, or -1
/// if nothing of the kind starts there. `stack` receives `${` openings.
function skip(src, i, stack) {
  const c = src[i];
  if (c === '"' || c === "'") {
    STRING.lastIndex = i;
    if (!STRING.test(src)) throw new ModuleSyntaxError(src, i, 'unterminated string literal');
    return STRING.lastIndex;
  }
  if (c === '`') return template(src, i + 1, stack);
  if (c === '/') {
    if (src[i + 1] === '/') { LINE_COMMENT.lastIndex = i; LINE_COMMENT.test(src); return LINE_COMMENT.lastIndex; }
    if (src[i + 1] === '*') { const end = src.indexOf('*/', i + 2); if (end < 0) throw new ModuleSyntaxError(src, i, 'unterminated comment'); return end + 2; }
    if (regexAllowed(src, i)) {
      REGEX.lastIndex = i;
      if (!REGEX.test(src)) throw new ModuleSyntaxError(src, i, 'unterminated regular expression literal');
      return REGEX.lastIndex;
    }
  }
  return -1;
}

function template(src, i, stack) {
  TEMPLATE_PART.lastIndex = i;
  const m = TEMPLATE_PART.exec(src);
  if (!m) throw new ModuleSyntaxError(src, i - 1, 'unterminated template literal');
  if (m[1] === '${') stack.push('${');
  return TEMPLATE_PART.lastIndex;
}

/// Whether a `/` at `i` starts a regular expression (else a division):
/// decided by what comes before it, as most JavaScript lexers guess.
function regexAllowed(src, i) {
  let p = i - 1;
  while (p >= 0 && /\s/.test(src[p])) p--;
  if (p < 0) return true;
  const c = src[p];
  if (c === ')' || c === ']') return false;
  if (/[\w$\u0080-\uffff]/.test(c)) return BEFORE_REGEX.test(src.slice(Math.max(0, p - 11), p + 1));
  return true;
}

/// The next token at or after `i`: { kind: 'name'|'string'|'punct', value, start, end }.
function token(src, i) {
  SPACE.lastIndex = i;
  SPACE.test(src);
  const start = SPACE.lastIndex;
  TOKEN.lastIndex = start;
  const m = TOKEN.exec(src);
  const newline = /[\n\r\u2028\u2029]/.test(src.slice(i, start));
  if (!m) return { kind: 'eof', value: '', start, end: start, newline };
  return { kind: m[1] ? 'name' : m[2] ? 'string' : 'punct', value: m[0], start, end: TOKEN.lastIndex, newline };
}

const unquote = (literal) => JSON.parse('"' + literal.slice(1, -1).replace(/\\'/g, "'").replace(/(?<!\\)((?:\\\\)*)"/g, '$1\\"') + '"');

/// Skips an expression (an initializer) from `i`: stops at a `,` or `;` or a
/// closing bracket of its own level, or at a line break where automatic
/// semicolon insertion ends it.
const CONTINUES = /^(?:[.?+\-*/%&|^<>=!,([`]|in(?![\w$])|instanceof)/;
function skipExpression(src, i) {
  const stack = [];
  for (;;) {
    SPACE.lastIndex = i;
    SPACE.test(src);
    const j = SPACE.lastIndex;
    if (j >= src.length) return j;
    if (stack.length === 0 && /[\n\r\u2028\u2029]/.test(src.slice(i, j))) {
      // `i` is just after the last token: does it or the next one continue the expression?
      if (!/[.?+\-*/%&|^<>=!,([{:~]$|=>$/.test(src.slice(Math.max(0, i - 2), i)) && !CONTINUES.test(src.slice(j, j + 12))) return i;
    }
    const c = src[j];
    const end = skip(src, j, stack);
    if (end >= 0) { i = end; continue; }
    if (c === '(' || c === '[' || c === '{') stack.push(c);
    else if (c === ')' || c === ']' || c === '}') {
      if (stack.length === 0) return j;
      if (stack.pop() === '${') { i = template(src, j + 1, stack); continue; }
    } else if (stack.length === 0 && (c === ',' || c === ';')) return j;
    TOKEN.lastIndex = j;
    TOKEN.exec(src);
    i = TOKEN.lastIndex;
  }
}

/// The names a binding pattern at `i` binds; returns the position after it.
function pattern(src, i, names) {
  const t = token(src, i);
  if (t.kind === 'name') { names.push(t.value); return t.end; }
  if (t.value !== '{' && t.value !== '[') throw new ModuleSyntaxError(src, t.start, `unexpected '${t.value}' in an exported declaration`);
  const close = t.value === '{' ? '}' : ']';
  i = t.end;
  for (;;) {
    let n = token(src, i);
    if (n.value === close) return n.end;
    if (n.value === ',') { i = n.end; continue; }
    if (n.value === '...') { i = pattern(src, n.end, names); continue; }
    if (close === '}') {
      let key = n;
      if (n.value === '[') { i = skipExpression(src, n.end); key = token(src, i); } // computed key: `]`
      const after = token(src, key.end);
      if (after.value === ':') i = pattern(src, after.end, names);
      else { names.push(key.value); i = key.end; }
    } else i = pattern(src, i, names);
    n = token(src, i);
    if (n.value === '=') i = skipExpression(src, n.end);
  }
}

/// Reads `from 'x'` plus import attributes and a `;`: { specifier, end }.
function fromClause(src, i) {
  const from = token(src, i);
  if (from.value !== 'from') throw new ModuleSyntaxError(src, from.start, `expected 'from', got '${from.value}'`);
  return specifierAt(src, from.end);
}
function specifierAt(src, i) {
  const s = token(src, i);
  if (s.kind !== 'string') throw new ModuleSyntaxError(src, s.start, 'expected a module specifier string');
  let end = s.end;
  let t = token(src, end);
  if ((t.value === 'with' || t.value === 'assert') && !t.newline) {
    const brace = token(src, t.end);
    end = src.indexOf('}', brace.end) + 1;
    t = token(src, end);
  }
  if (t.value === ';') end = t.end;
  return { specifier: unquote(s.value), end, at: s.start };
}

/// `{ a, b as c, 'd' as e }` from `i` (after the `{`): [[name, local]...], end.
function namedList(src, i) {
  const list = [];
  for (;;) {
    let t = token(src, i);
    if (t.value === '}') return { list, end: t.end };
    if (t.value === ',') { i = t.end; continue; }
    if (t.kind !== 'name' && t.kind !== 'string') throw new ModuleSyntaxError(src, t.start, `unexpected '${t.value}' in an import or export list`);
    const name = t.kind === 'string' ? unquote(t.value) : t.value;
    let local = name;
    i = t.end;
    t = token(src, i);
    if (t.value === 'as') {
      const as = token(src, t.end);
      local = as.kind === 'string' ? unquote(as.value) : as.value;
      i = as.end;
    }
    list.push([name, local]);
  }
}

/// The module `source` as a function body: { body, deps, exports }.
/// deps: [{ specifier, line, names }]; exports: [exported, local] for a local
/// binding, [exported, dep, name] for a re-export ('*' name: the namespace),
/// ['*', dep] for `export *`.
export function rewrite(source) {
  const edits = [];
  const hashbang = /^#!.*/.exec(source)?.[0];
  if (hashbang) { source = ' '.repeat(hashbang.length) + source.slice(hashbang.length); }
  const deps = [];
  const exports = [];
  const dep = (specifier, at) => deps.push({ specifier, line: lineOf(source, at), names: [] }) - 1;
  const blank = (start, end, text = '') => edits.push([start, end, text + keepLines(source.slice(start, end))]);
  const spaces = (start, end) => edits.push([start, end, ' '.repeat(end - start)]);
  const stack = [];
  INTERESTING.lastIndex = 0;
  for (let m; (m = INTERESTING.exec(source));) {
    const i = m.index;
    const c = m[0];
    if (c.length === 1) {
      let end = skip(source, i, stack);
      if (end < 0) {
        if (c === '(' || c === '[' || c === '{') stack.push(c);
        else if (c === ')' || c === ']' || c === '}') {
          // One too many would close the function the module is wrapped in.
          if (stack.length === 0) throw new ModuleSyntaxError(source, i, `unmatched '${c}'`);
          if (stack.pop() === '${') end = template(source, i + 1, stack);
        }
      }
      if (end >= 0) INTERESTING.lastIndex = end;
      continue;
    }
    const next = token(source, i + c.length);
    if (c === 'import' && next.value === '(') {
      // A method named `import` (`import(x) {`) is left alone.
      const close = skipExpression(source, next.end);
      if (token(source, token(source, close).end).value !== '{') edits.push([i, i + 6, `${RT}.import`]);
      continue;
    }
    if (c === 'import' && next.value === '.') {
      edits.push([i, token(source, next.end).end, `${RT}.meta`]);
      continue;
    }
    if (stack.length > 0) continue;
    let end;
    if (c === 'import') {
      if (next.kind === 'string') { // import 'x';
        const from = specifierAt(source, next.start);
        dep(from.specifier, from.at);
        blank(i, from.end);
        INTERESTING.lastIndex = from.end;
        continue;
      }
      const consts = [];
      const named = [];
      let t = next;
      if (t.kind === 'name' && t.value !== 'from') { named.push(['default', t.value]); t = token(source, t.end); if (t.value === ',') t = token(source, t.end); }
      else if (t.kind === 'name') { named.push(['default', t.value]); t = token(source, t.end); } // `import from from 'x'`
      if (t.value === '*') {
        const as = token(source, t.end);
        const local = token(source, as.end);
        consts.push(local.value);
        t = token(source, local.end);
      } else if (t.value === '{') {
        const list = namedList(source, t.end);
        named.push(...list.list);
        t = token(source, list.end);
      }
      const from = fromClause(source, t.start);
      const d = dep(from.specifier, from.at);
      deps[d].names.push(...named.map(([name]) => name));
      const parts = consts.map((local) => `const ${local} = ${RT}.ns(${d});`);
      if (named.length) parts.push(`const { ${named.map(([name, local]) => `${JSON.stringify(name)}: ${local}`).join(', ')} } = ${RT}.ns(${d});`);
      blank(i, from.end, parts.join(' '));
      end = from.end;
    } else if (next.value === 'default') {
      let t = token(source, next.end);
      if (t.value === 'async' && !token(source, t.end).newline) t = token(source, t.end);
      let name;
      if (t.value === 'function' || t.value === 'class') {
        let n = token(source, t.end);
        if (n.value === '*') n = token(source, n.end);
        if (n.kind === 'name' && n.value !== 'extends') name = n.value;
      }
      if (name) { spaces(i, next.end); exports.push(['default', name]); }
      else { edits.push([i, next.end, `${RT}.default =`]); exports.push(['default', `${RT}.default`]); }
      end = next.end;
    } else if (next.value === '*') {
      let t = token(source, next.end);
      let as;
      if (t.value === 'as') { const n = token(source, t.end); as = n.kind === 'string' ? unquote(n.value) : n.value; t = token(source, n.end); }
      const from = fromClause(source, t.start);
      const d = dep(from.specifier, from.at);
      exports.push(as === undefined ? ['*', d] : [as, d, '*']);
      blank(i, from.end);
      end = from.end;
    } else if (next.value === '{') {
      const list = namedList(source, next.end);
      const t = token(source, list.end);
      if (t.value === 'from') {
        const from = fromClause(source, t.start);
        const d = dep(from.specifier, from.at);
        for (const [name, exported] of list.list) { deps[d].names.push(name); exports.push([exported, d, name]); }
        end = from.end;
      } else {
        for (const [local, exported] of list.list) exports.push([exported, local]);
        end = t.value === ';' ? t.end : list.end;
      }
      blank(i, end);
    } else {
      let t = next;
      if (t.value === 'async') t = token(source, t.end);
      if (t.value === 'function' || t.value === 'class') {
        let n = token(source, t.end);
        if (n.value === '*') n = token(source, n.end);
        exports.push([n.value, n.value]);
      } else if (t.value === 'const' || t.value === 'let' || t.value === 'var') {
        const names = [];
        let at = t.end;
        for (;;) {
          at = pattern(source, at, names);
          let n = token(source, at);
          if (n.value === '=') { at = skipExpression(source, n.end); n = token(source, at); }
          if (n.value !== ',') break;
          at = n.end;
        }
        for (const name of names) exports.push([name, name]);
      } else throw new ModuleSyntaxError(source, next.start, `unexpected '${next.value}' after 'export'`);
      spaces(i, i + 6);
      end = i + 6;
    }
    INTERESTING.lastIndex = end;
  }
  if (stack.length > 0) throw new ModuleSyntaxError(source, source.length, `missing closing bracket at the end of the file`);
  edits.sort((a, b) => b[0] - a[0]);
  let body = source;
  for (const [start, end, text] of edits) body = body.slice(0, start) + text + body.slice(end);
  return { body, deps, exports };
}
