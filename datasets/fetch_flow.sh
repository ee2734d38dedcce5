#!/usr/bin/env bash
# Downloads the optical-flow evaluation pairs of deq-flow's README table into
# ${DEQ_DATA_DIR:-datasets}/flow, in the folder layout `deq-flow eval --dataset folder` reads:
#   flow/sintel_{alley_1,cave_2,market_5}/{clean,final}/frame_000{2,3}.png  MPI-Sintel training
#       frames 2 -> 3 of three scenes (Sintel film CC BY 3.0, Blender Foundation; Butler et al.
#       ECCV 2012), with gt/frame_0002.flo and the gt/{invalid,occlusions}/frame_0002.png masks,
#       as published in fperezgamonal/faldoi-ipol (example_data/*/{easy,medium,hard});
#   flow/middlebury_urban2/{frame10,frame11}.png, flow10.flo   Middlebury Urban2 (Baker et al.
#       IJCV 2011), as published in Megamusz/frame-interpolation (example/);
#   flow/middlebury_venus/{frame1,frame2}.png, example.flo     Middlebury Venus, as published in
#       JuliaImages/ImageTracking.jl (demo/error_evaluation_demo_data/).
# Every file is checked against its SHA-256. Needs internet, curl and sha256sum.
# Usage: datasets/fetch_flow.sh
set -euo pipefail
dest="${DEQ_DATA_DIR:-$(dirname "$0")}/flow"
faldoi="https://raw.githubusercontent.com/fperezgamonal/faldoi-ipol/561809fa0f8b65d65c42c102aef0fbf2e27b35d8/example_data"
urban="https://raw.githubusercontent.com/Megamusz/frame-interpolation/d9376129e7048ff210d7e48ce9f7db2bfeaebdde/example"
venus="https://raw.githubusercontent.com/JuliaImages/ImageTracking.jl/73de48a0c38806182a36de214ebb9ba88501f9c0/demo/error_evaluation_demo_data"
get() { mkdir -p "$(dirname "$dest/$2")"; curl -fL --retry 3 -s -o "$dest/$2" "$1"; }
for pair in "alley_1 easy" "cave_2 medium" "market_5 hard"; do
  set -- $pair
  for pass in clean final; do
    for f in frame_0002.png frame_0003.png; do
      get "$faldoi/$pass/$2/$f" "sintel_$1/$pass/$f"
    done
  done
  get "$faldoi/clean/$2/gt/frame_0002.flo" "sintel_$1/gt/frame_0002.flo"
  get "$faldoi/clean/$2/gt/occlusions/frame_0002.png" "sintel_$1/gt/occlusions/frame_0002.png"
  get "$faldoi/clean/$2/gt/invalid/frame_0002.png" "sintel_$1/gt/invalid/frame_0002.png"
done
for f in frame10.png frame11.png flow10.flo; do get "$urban/$f" "middlebury_urban2/$f"; done
for f in frame1.png frame2.png example.flo; do get "$venus/$f" "middlebury_venus/$f"; done
(cd "$dest" && sha256sum -c --quiet - <<'SUMS'
d3abf61f21ad1b29337384dc1ce3875f32635a9b3cfac04af15dccfab52c0b50  middlebury_urban2/flow10.flo
c579ba980fcf3703ffcb18616cdfeadcd9b6cc42564169b67fd27192498fd419  middlebury_urban2/frame10.png
6c03cc8375f15d0f29f6b2f66e55c56dfbdf9393f956293962e0b5fa5e044be4  middlebury_urban2/frame11.png
4f5e58609d02d8198f838de8b3f34a952cfaebf284938daa255066c535610f34  middlebury_venus/example.flo
f36d77900848c4d5bf6f31898e43d3db4c912f474f273b331d7a96113ea5a637  middlebury_venus/frame1.png
45860656c48fec7fff1ed3528bd2d72f4f6dbf71c6d621fb2e0f48a531e617d0  middlebury_venus/frame2.png
696d7261474752aeef2e5eea1a6d06e62435c7e2b5f819b894f873d4e94011bd  sintel_alley_1/clean/frame_0002.png
b7bacfec2d66dfc1be8e8f7ca896e9ba1ff882188ca1a9c3cfe5c59e6671ae68  sintel_alley_1/clean/frame_0003.png
74f0b42bb0d8e6330ead4a3251d4a51856f0378671bbbec1bf3c67c8184438fd  sintel_alley_1/final/frame_0002.png
0551b851f15e08cee2ecb8ff75f0db6de273d1147c64e43268dd6e5db1b1326a  sintel_alley_1/final/frame_0003.png
1e17b0eecf04903df0437c2987c9de379754cb33a429c12ace2da04ee1351266  sintel_alley_1/gt/frame_0002.flo
9a002f5b66a24d36ae83f5ee544f3247ea7ecdfb4aee02f28bafae8daefdcfb7  sintel_alley_1/gt/invalid/frame_0002.png
5686bbf51f771256565d2ac5e9919446a5f41d40a1afd7813075dbe87db39ead  sintel_alley_1/gt/occlusions/frame_0002.png
4225270ca5e86b978bce9e6371d12130f00288e4f59f56e5dd028b2939824040  sintel_cave_2/clean/frame_0002.png
e397c87bb3a73790eb266d09e75e60feab7dfeb5341a3d12dad2d066d219a8e9  sintel_cave_2/clean/frame_0003.png
d12a338a1be958b293f75850280a630dab78ef43a6f03a156c0368710d54e77a  sintel_cave_2/final/frame_0002.png
f2cf594ed013968d02a9e5b9d4bc31a32aacbc64628872d4201b30832f241f52  sintel_cave_2/final/frame_0003.png
65a7d2d88dc2938ecce8d8a619a6d61636034ff799d21ba67b2f4a9c3a5ecbcd  sintel_cave_2/gt/frame_0002.flo
676856ded7ed7f1b80ace3c1e1964d2e3db95a613584b2c3eedbea35a3fd3016  sintel_cave_2/gt/invalid/frame_0002.png
607dbb44b5dfb653c85d4d5e9d17e41132edbb6cbfbccaa5bc6c289c446a8291  sintel_cave_2/gt/occlusions/frame_0002.png
af7acb5bd0eddf0e1a72b00c4ec99bff73a21cb45190a5b2a8830c828c9cf35f  sintel_market_5/clean/frame_0002.png
e63924ecbf63420eb498fd32e015e603c5536bfe59d3346799988a2639c1621b  sintel_market_5/clean/frame_0003.png
e564e2598742940b5a8b5823804ffc196804f6e051768894246906fd8c03e00f  sintel_market_5/final/frame_0002.png
3636ac1a35d20c5d4ce41f1bd4801d5a04bf6ca29cc4e9f48c27047e326cd1c1  sintel_market_5/final/frame_0003.png
b809b77b2410a3d7e6943064370f105edc2e81977161bed6be40cece8436f088  sintel_market_5/gt/frame_0002.flo
f051e8839cb8254f184376247e1bb577dec6f678eece4c916d5c1ad4ab5d684b  sintel_market_5/gt/invalid/frame_0002.png
a2fe71c1a6d2caf208baf7d241ceb95f4bbf034f16cb4f11b68dd72eae60ae3f  sintel_market_5/gt/occlusions/frame_0002.png
SUMS
)
echo "flow evaluation pairs in $dest"
