B=/work/main/target/release/dsocr; cd /work/main
i=0
for m in at-load saved at-load saved; do
  i=$((i+1))
  if [ $m = at-load ]; then A="--model /tmp/full --quant q8"; else A="--model /tmp/full-q8"; fi
  $B bench $A --device cpu --decode-tokens 32 --repeat 1 --skip-vision --skip-base --skip-pages --skip-breakdown > /tmp/cpuq/clean-$i-$m.log 2>&1
done
echo done > /tmp/cpuq/clean-done
