// LoRA Loom: give Loom nodes one recognisable colour so stacks are easy to spot in big graphs.
import { app } from "../../scripts/app.js";

const LOOM_COLOR = "#2f3a4a";
const LOOM_BGCOLOR = "#1f2630";

app.registerExtension({
  name: "lora_loom.nodeStyle",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Loom")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color ??= LOOM_COLOR;
      this.bgcolor ??= LOOM_BGCOLOR;
      return result;
    };
  },
});
