// Shows the text a TagLoom output node returns in its "ui" (the caption job's summary, the trained
// model's path) in a read-only box on the node. ComfyUI's frontend displays the images, audio and
// video of a node's "ui" by itself, but not text: that takes a few lines per node type, here.
//
// The box is added on the first run, after the node's own widgets, and is never saved: not in the
// workflow's widgets_values (a shared workflow keeps the node's inputs only, in their order), not
// in the API prompt.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES = new Set(["TagLoomCaptionFolder", "TagLoomTrain"]);
const NAME = "tagloom_result";

function resultWidget(node) {
  let widget = node.widgets?.find((w) => w.name === NAME);
  if (widget) return widget;
  widget = ComfyWidgets.STRING(node, NAME, ["STRING", { multiline: true }], app).widget;
  widget.label = "result"; // what the Vue node renderer prints above the box
  widget.serialize = false; // workflow JSON
  widget.options = { ...(widget.options || {}), serialize: false, read_only: true }; // API prompt
  if (widget.inputEl) {
    widget.inputEl.readOnly = true;
    widget.inputEl.classList.add("tagloom-result");
    widget.inputEl.style.opacity = "0.85";
  }
  return widget;
}

function showText(node, text) {
  const widget = resultWidget(node);
  widget.value = Array.isArray(text) ? text.join("\n") : String(text);
  if (widget.inputEl) widget.inputEl.value = widget.value;
  const [w, h] = node.computeSize?.() || node.size;
  node.setSize?.([Math.max(node.size[0], w), Math.max(node.size[1], h)]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "TagLoom.NodeText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text?.length) showText(this, message.text);
    };
  },
});
